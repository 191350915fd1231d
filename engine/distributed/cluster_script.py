"""A SLURM job script that trains a project on N nodes x G GPUs with srun + torchrun.

One task per node runs torchrun, which starts one process per GPU; the nodes meet through c10d
rendezvous on the job's first node. The run folder lives on shared storage: near the time limit
SLURM signals the job, which puts itself back in the queue, and the requeued job continues the run
from its last completed epoch (`train --resume`). `cluster_job` checks every input (one-line
UserError); `render` only formats.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.model.project import load_project
from engine.errors import UserError
from engine.runs.run_folder import RunFolder

DEFAULT_PORT = 29500
DEFAULT_CPUS_PER_GPU = 8
MAX_NODES = 10_000
MAX_GPUS_PER_NODE = 64
MAX_CPUS_PER_TASK = 4096  # above the largest nodes built; a typo of a few digits is refused
REQUEUE_LEAD_S = 300  # how long before the time limit SLURM warns the job: time to requeue cleanly
# SLURM names (partition, job name): a line of #SBATCH must not be able to carry a second option.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,+-]+$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")


@dataclass(frozen=True)
class ClusterJob:
    project: Path  # absolute
    run_dir: Path  # absolute, on storage every node sees
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    partition: str | None
    time_limit: str | None  # [D-]HH:MM:SS
    port: int
    code_root: Path  # where `python -m app.cli` is found
    venv: Path | None  # activated first, when the generating interpreter ran in one
    job_name: str


def parse_time_limit(text: str) -> int:
    """Seconds of a SLURM time limit written [D-]HH:MM:SS; UserError otherwise."""
    match = _TIME.match(text)
    if not match:
        raise UserError(f"time limit {text!r} is not HH:MM:SS (or D-HH:MM:SS), e.g. 04:00:00")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise UserError(f"time limit {text!r} is no time at all")
    return total


def installation_root() -> Path:
    """The folder holding this installation's packages (engine/, app/): `python -m app.cli` runs from there."""
    return Path(__file__).resolve().parents[2]  # engine/distributed/ -> the folder holding app/ and engine/


def active_venv() -> Path | None:
    """The virtual environment this process runs in, if any: the job activates the same one."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def cluster_job(project: str | Path, nodes: int, gpus_per_node: int, **options) -> ClusterJob:
    """A checked job for a project file: it loads, and job_for_project's checks hold."""
    project = Path(project).expanduser().absolute()
    if not project.is_file():
        raise UserError(f"project file not found: {project}" if not project.exists() else f"{project} is not a file")
    config = load_project(project)  # one line naming the file and the field when it is not a valid project
    check_plan_edits(config, project)
    return job_for_project(config, project, nodes, gpus_per_node, **options)


def check_plan_edits(config: RunConfig, project: Path) -> None:
    """UserError naming the file and the first layer edit its model does not have: a job that
    would fail on the cluster, after its wait in the queue, is refused here. The model is built on the
    meta device (no memory, no weights), and only when there are edits."""
    if not config.plan.edits:
        return
    import torch

    from engine.model.architectures import build_model
    from engine.plan.plan import build_plan

    def structure():
        return build_model(config.model.arch, 2, "none", config.data.image_size).info  # names do not depend on classes

    try:
        with torch.device("meta"):
            info = structure()
    except (NotImplementedError, RuntimeError):  # a model that copies tensors while it is built (RegNet)
        info = structure()
    try:
        build_plan(config.plan, info)
    except UserError as exc:
        raise UserError(f"{project.name}: {exc}") from None


def job_for_project(config: RunConfig, project: Path, nodes: int, gpus_per_node: int, *,
                    run_dir: str | Path | None = None, partition: str | None = None, time_limit: str | None = None,
                    cpus_per_task: int | None = None, port: int = DEFAULT_PORT, code_root: Path | None = None,
                    venv: Path | None = None) -> ClusterJob:
    """A checked job for `config` as saved (or about to be saved) at `project`: counts are in range, the
    time limit and names are well formed. The code and the environment default to this installation's
    (the cluster sees the same paths)."""
    project = Path(project).expanduser().absolute()
    root = config.data.root
    if root and not Path(root).expanduser().is_absolute():
        raise UserError(f"{project.name}: the dataset folder {root!r} is relative; on a cluster give an absolute "
                        f"path on storage every node sees")
    if not 1 <= nodes <= MAX_NODES:
        raise UserError(f"--nodes must be between 1 and {MAX_NODES:,}, got {nodes}")
    if not 1 <= gpus_per_node <= MAX_GPUS_PER_NODE:
        raise UserError(f"--gpus-per-node must be between 1 and {MAX_GPUS_PER_NODE}, got {gpus_per_node}")
    cpus = DEFAULT_CPUS_PER_GPU * gpus_per_node if cpus_per_task is None else cpus_per_task
    if cpus < 1:
        raise UserError(f"--cpus-per-task must be at least 1, got {cpus}")
    if cpus > MAX_CPUS_PER_TASK:
        raise UserError(f"--cpus-per-task must be at most {MAX_CPUS_PER_TASK}, got {cpus}")
    if not 1024 <= port <= 65535:
        raise UserError(f"--port must be between 1024 and 65535, got {port}")
    if partition is not None and not _SLURM_NAME.match(partition):
        raise UserError(f"partition {partition!r} is not a SLURM partition name (letters, digits, _ . , + -)")
    if time_limit is not None:
        parse_time_limit(time_limit)
    stem = project.name.split(".")[0] or "project"
    if not run_dir:  # the project's own output folder when it names one absolutely, else one beside the project
        named = Path(config.out_dir).expanduser() if config.out_dir else None
        run_dir = named if named and named.is_absolute() else project.parent / "runs" / f"{stem}-cluster"
    run_dir = Path(run_dir).expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"the run folder {run_dir} is a file")
    job_name = "ts-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "project")
    venv = venv if venv is not None else active_venv()
    return ClusterJob(project, run_dir, nodes, gpus_per_node, cpus, partition, time_limit, port,
                      Path(code_root or installation_root()).absolute(), Path(venv).absolute() if venv else None,
                      job_name)


def requeue_lead(job: ClusterJob) -> int:
    """Seconds before the limit to signal: REQUEUE_LEAD_S, or a fifth of a short limit."""
    if job.time_limit is None:
        return REQUEUE_LEAD_S
    return max(10, min(REQUEUE_LEAD_S, parse_time_limit(job.time_limit) // 5))


def render(job: ClusterJob) -> str:
    """The job script's text (bash, for sbatch)."""
    q = shlex.quote
    folder = RunFolder(job.run_dir)
    resume_file, record_file = folder.resume_path.name, folder.record_path.name
    sbatch = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
              f"--gpus-per-node={job.gpus_per_node}", f"--cpus-per-task={job.cpus_per_task}"]
    if job.time_limit:
        sbatch.append(f"--time={job.time_limit}")
    if job.partition:
        sbatch.append(f"--partition={job.partition}")
    sbatch += ["--requeue", f"--signal=B:USR1@{requeue_lead(job)}"]
    lines = ["#!/bin/bash",
             # The name as a JSON string: a newline in a file name must not start a line bash runs.
             f"# Transfer Studio: train {json.dumps(job.project.name)} on {job.nodes} node(s) x {job.gpus_per_node} GPU(s).",
             "# Written by `transfer-studio cluster-script`; submit with: sbatch THIS_FILE",
             *(f"#SBATCH {option}" for option in sbatch),
             "set -euo pipefail",
             "",
             f"PROJECT={q(str(job.project))}",
             f"RUN_DIR={q(str(job.run_dir))}  # on storage every node sees",
             f"cd {q(str(job.code_root))}  # where `python -m app.cli` is found"]
    if job.venv:
        lines.append(f"source {q(str(job.venv / 'bin' / 'activate'))}")
    lines += ["",
              "# Near the time limit SLURM sends USR1 (see --signal): back into the queue; the next start resumes.",
              "trap 'scontrol requeue \"$SLURM_JOB_ID\"' USR1",
              "",
              f"if [ -f \"$RUN_DIR/{resume_file}\" ]; then",
              "  TRAIN_ARGS=(--resume \"$RUN_DIR\")  # requeued: continue from the last completed epoch",
              "else",
              f"  if [ -e \"$RUN_DIR/{record_file}\" ]; then  # started, but no epoch finished: keep it aside",
              "    mv \"$RUN_DIR\" \"$RUN_DIR.unfinished-$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}\"",
              "  fi",
              "  TRAIN_ARGS=(--project \"$PROJECT\" --out \"$RUN_DIR\")",
              "fi",
              "",
              "# sed reads every line (head would stop early, and pipefail count the writer's SIGPIPE as failure)",
              "HEAD_NODE=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | sed -n 1p)",
              f"srun torchrun --nnodes {job.nodes} --nproc-per-node {job.gpus_per_node} \\",
              f"  --rdzv-backend c10d --rdzv-endpoint \"$HEAD_NODE:{job.port}\" --rdzv-id \"$SLURM_JOB_ID\" \\",
              "  -m app.cli train \"${TRAIN_ARGS[@]}\" &",
              "TRAINING=$!",
              "wait \"$TRAINING\"  # waited for in the background, so the USR1 trap runs during training",
              ""]
    return "\n".join(lines)


def check_script_path(script: str | os.PathLike, project: str | os.PathLike) -> Path:
    """Where the job script may be written: a file name, and not the project it trains."""
    out = Path(script).expanduser()
    if out.is_dir():
        raise UserError(f"{out} is a folder; name the script file, e.g. {out / 'job.sbatch'}")
    if os.path.realpath(out) == os.path.realpath(Path(project).expanduser()):
        raise UserError(f"{out} is the project file itself; write the job script to another file")
    return out
