"""Sub-command cluster-script: a SLURM job script that trains a project with srun + torchrun.

Registered by app.cli: add_commands(sub, number) adds the parser, HANDLERS maps the command to its
function (args -> exit code). The script text comes from engine.distributed.cluster_script, which the window's
File > Export cluster job... uses too.
"""

from __future__ import annotations

import sys

from engine.errors import UserError


def add_commands(sub, number) -> None:
    """Adds this module's sub-parser to `sub`."""
    from engine.distributed.cluster_script import DEFAULT_PORT

    script = sub.add_parser("cluster-script", help="write a SLURM job script: srun + torchrun on N nodes x G GPUs, "
                                                   "resumed when requeued")
    script.add_argument("--project", required=True, metavar="FILE", help="project file to train (Save project…)")
    script.add_argument("--nodes", type=int, required=True, metavar="N")
    script.add_argument("--gpus-per-node", type=int, required=True, metavar="G", help="processes (one per GPU) per node")
    script.add_argument("--partition", metavar="P")
    script.add_argument("--time", metavar="HH:MM:SS", help="time limit (D-HH:MM:SS for days)")
    script.add_argument("--cpus-per-task", type=int, metavar="C", help="CPU cores per node's task (default: 8 per GPU)")
    script.add_argument("--port", type=int, default=DEFAULT_PORT, help="rendezvous port on the first node")
    script.add_argument("--run-dir", metavar="DIR",
                        help="run folder on shared storage (default: runs/<project>-cluster beside the project)")
    script.add_argument("--out", metavar="FILE", help="write the script here (default: print it)")


def _cluster_script(args) -> int:
    from engine.atomic import atomic_write_bytes
    from engine.distributed.cluster_script import check_script_path, cluster_job, render

    job = cluster_job(args.project, args.nodes, args.gpus_per_node, run_dir=args.run_dir, partition=args.partition,
                      time_limit=args.time, cpus_per_task=args.cpus_per_task, port=args.port)
    text = render(job)
    if not args.out:
        sys.stdout.write(text)
        return 0
    out = check_script_path(args.out, args.project)
    try:
        atomic_write_bytes(out, text.encode())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}: {job.nodes} node(s) x {job.gpus_per_node} GPU(s), run folder {job.run_dir}; "
          f"submit with: sbatch {out}", file=sys.stderr)
    return 0


HANDLERS: dict = {"cluster-script": _cluster_script}
