"""`cluster-script --search`: a SLURM array job whose tasks are search workers on one journal file.

Each array task runs `search` on one node with the project's settings, the same storage and the same
trial count: together they run the trials wanted, each task asking the journal for the next (the
journal's lock works on the shared file systems clusters use). A task the scheduler requeues near its
time limit first fails its trial in flight (SIGTERM), then starts again and carries on with the others.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from engine.distributed.cluster_script import (MAX_CPUS_PER_TASK, MAX_GPUS_PER_NODE, MAX_NODES, active_venv,
                                               check_plan_edits, installation_root, parse_time_limit, requeue_lead)
from engine.errors import UserError
from engine.model.project import load_project
from engine.search.space import default_space, narrowed, stage_groups_below_head

_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,+-]+$")
DEFAULT_CPUS_PER_TASK = 8


@dataclass(frozen=True)
class SearchArrayJob:
    project: Path  # absolute
    run_dir: Path  # the trials' runs folder, on storage every node sees
    storage: Path  # the journal file every task shares
    tasks: int
    trials: int
    head_only: bool
    space: tuple[str, ...]  # --space texts, checked
    gpus_per_task: int  # 0: CPU only
    cpus_per_task: int
    partition: str | None
    time_limit: str | None
    code_root: Path
    venv: Path | None
    job_name: str


def search_array_job(project: str | Path, tasks: int, trials: int, *, head_only: bool = False,
                     space: tuple[str, ...] = (), run_dir: str | Path | None = None, storage: str | Path | None = None,
                     gpus_per_task: int = 1, cpus_per_task: int | None = None, partition: str | None = None,
                     time_limit: str | None = None, code_root: Path | None = None,
                     venv: Path | None = None) -> SearchArrayJob:
    """A checked array job: the project loads and names an absolute dataset, the space is one the
    project's model can search, counts and names are well formed. Refused here rather than after a wait
    in the queue."""
    project = Path(project).expanduser().absolute()
    if not project.is_file():
        raise UserError(f"project file not found: {project}" if not project.exists() else f"{project} is not a file")
    config = load_project(project)
    check_plan_edits(config, project)
    root = config.data.root
    if not root or not Path(root).expanduser().is_absolute():
        raise UserError(f"{project.name}: the dataset folder {root!r} is relative; on a cluster give an absolute "
                        f"path on storage every node sees")
    if not 1 <= tasks <= MAX_NODES:
        raise UserError(f"--tasks must be between 1 and {MAX_NODES:,}, got {tasks}")
    if not 1 <= trials <= 100_000:
        raise UserError(f"--trials must be between 1 and 100,000, got {trials}")
    if not 0 <= gpus_per_task <= MAX_GPUS_PER_NODE:
        raise UserError(f"--gpus-per-node must be between 0 and {MAX_GPUS_PER_NODE} with --search (GPUs per task), "
                        f"got {gpus_per_task}")
    cpus = DEFAULT_CPUS_PER_TASK if cpus_per_task is None else cpus_per_task
    if not 1 <= cpus <= MAX_CPUS_PER_TASK:
        raise UserError(f"--cpus-per-task must be between 1 and {MAX_CPUS_PER_TASK}, got {cpus}")
    if partition is not None and not _SLURM_NAME.match(partition):
        raise UserError(f"partition {partition!r} is not a SLURM partition name (letters, digits, _ . , + -)")
    if time_limit is not None:
        parse_time_limit(time_limit)
    groups = stage_groups_below_head(config.model.arch, config.data.image_size)
    narrowed(default_space(head_only, len(groups)), space)  # a bad --space fails here, not on the cluster
    stem = project.name.split(".")[0] or "project"
    run_dir = Path(run_dir or project.parent / "runs" / f"{stem}-search").expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"the runs folder {run_dir} is a file")
    storage = Path(storage or run_dir / "search.journal").expanduser().absolute()
    if storage.is_dir():
        raise UserError(f"--storage {storage} is a folder; name a journal file")
    job_name = "ts-search-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "project")
    venv = venv if venv is not None else active_venv()
    return SearchArrayJob(project, run_dir, storage, tasks, trials, head_only, tuple(space), gpus_per_task, cpus,
                          partition, time_limit, Path(code_root or installation_root()).absolute(),
                          Path(venv).absolute() if venv else None, job_name)


def render_search(job: SearchArrayJob) -> str:
    """The array job script's text (bash, for sbatch)."""
    q = shlex.quote
    sbatch = [f"--job-name={job.job_name}", f"--array=0-{job.tasks - 1}", "--nodes=1", "--ntasks=1",
              f"--cpus-per-task={job.cpus_per_task}"]
    if job.gpus_per_task:
        sbatch.append(f"--gpus-per-task={job.gpus_per_task}")
    if job.time_limit:
        sbatch.append(f"--time={job.time_limit}")
    if job.partition:
        sbatch.append(f"--partition={job.partition}")
    sbatch += ["--requeue", f"--signal=B:USR1@{requeue_lead(job)}"]
    search = ["python3", "-m", "app.cli", "search", "--project", "\"$PROJECT\"", "--storage", "\"$STORAGE\"",
              "--out", "\"$RUN_DIR\"", "--trials", str(job.trials)]
    if job.head_only:
        search.append("--head-only")
    for text in job.space:
        search += ["--space", q(text)]
    lines = ["#!/bin/bash",
             f"# Transfer Studio: search {json.dumps(job.project.name)} with {job.tasks} array task(s) on one "
             f"journal, {job.trials} trial(s) in all.",
             "# Written by `transfer-studio cluster-script --search`; submit with: sbatch THIS_FILE",
             *(f"#SBATCH {option}" for option in sbatch),
             "set -euo pipefail",
             "",
             f"PROJECT={q(str(job.project))}",
             f"RUN_DIR={q(str(job.run_dir))}  # the trials' run folders, on storage every node sees",
             f"STORAGE={q(str(job.storage))}  # the journal every task reads and appends to",
             f"cd {q(str(job.code_root))}  # where `python -m app.cli` is found"]
    if job.venv:
        lines.append(f"source {q(str(job.venv / 'bin' / 'activate'))}")
    lines += ["",
              "# Near the time limit SLURM sends USR1: the search fails its trial in flight (SIGTERM: a script's",
              "# background job ignores SIGINT) and the task goes back into the queue; started again, it carries on.",
              "trap 'kill -TERM \"$SEARCH\" 2>/dev/null || true; wait \"$SEARCH\" || true; "
              "scontrol requeue \"$SLURM_JOB_ID\"' USR1",
              "",
              " ".join(search) + " &",
              "SEARCH=$!",
              "wait \"$SEARCH\"  # waited for in the background, so the USR1 trap runs during the search",
              ""]
    return "\n".join(lines)
