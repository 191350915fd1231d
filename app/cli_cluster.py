"""Sub-command cluster-script: a SLURM job script that trains a project with srun + torchrun, or (--search)
an array job whose tasks search one project's knobs on a shared journal file.

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
    script.add_argument("--nodes", type=int, metavar="N", help="required without --search")
    script.add_argument("--gpus-per-node", type=int, metavar="G",
                        help="processes (one per GPU) per node; with --search GPUs per array task (default 1, 0: CPU)")
    script.add_argument("--partition", metavar="P")
    script.add_argument("--time", metavar="HH:MM:SS", help="time limit (D-HH:MM:SS for days)")
    script.add_argument("--cpus-per-task", type=int, metavar="C", help="CPU cores per node's task (default: 8 per GPU)")
    script.add_argument("--port", type=int, default=DEFAULT_PORT, help="rendezvous port on the first node")
    script.add_argument("--run-dir", metavar="DIR",
                        help="run folder on shared storage (default: runs/<project>-cluster beside the project)")
    script.add_argument("--out", metavar="FILE", help="write the script here (default: print it)")
    search = script.add_argument_group("search (--search): a SLURM array job of search workers on one journal")
    search.add_argument("--search", action="store_true", help="write a search array job instead of a training job")
    search.add_argument("--tasks", type=number("search.tasks"), default=None, metavar="K",
                        help="array tasks, each a search worker on one node")
    search.add_argument("--trials", type=number("search.trials"), default=None, metavar="N",
                        help="trials wanted in all, over every task")
    search.add_argument("--head-only", action="store_true", help="as search --head-only")
    search.add_argument("--space", action="append", default=[], metavar="KNOB=RANGE", help="as search --space")
    search.add_argument("--storage", metavar="FILE", help="the shared journal (default: RUN_DIR/search.journal)")


_SEARCH_ONLY = ("tasks", "trials", "head_only", "space", "storage")


def _cluster_script(args) -> int:
    from engine.distributed.cluster_script import cluster_job, render

    if args.search:
        return _search_script(args)
    given = [f"--{name.replace('_', '-')}" for name in _SEARCH_ONLY if getattr(args, name)]
    if given:
        raise UserError(f"{', '.join(given)}: only with --search")
    missing = [flag for flag, value in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node))
               if value is None]
    if missing:
        raise UserError(f"cluster-script needs {' and '.join(missing)} (or --search for a search array job)")
    job = cluster_job(args.project, args.nodes, args.gpus_per_node, run_dir=args.run_dir, partition=args.partition,
                      time_limit=args.time, cpus_per_task=args.cpus_per_task, port=args.port)
    return _write_script(args, render(job),
                         f"{job.nodes} node(s) x {job.gpus_per_node} GPU(s), run folder {job.run_dir}")


def _write_script(args, text: str, what: str) -> int:
    """The script on stdout, or written to --out (never over the project) with a line saying what it runs."""
    from engine.atomic import atomic_write_bytes
    from engine.distributed.cluster_script import check_script_path

    if not args.out:
        sys.stdout.write(text)
        return 0
    out = check_script_path(args.out, args.project)
    try:
        atomic_write_bytes(out, text.encode())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}: {what}; submit with: sbatch {out}", file=sys.stderr)
    return 0


def _search_script(args) -> int:
    from engine.search.cluster import render_search, search_array_job

    if args.nodes is not None:
        raise UserError("--nodes: each search task runs on one node; give --tasks K for K of them")
    missing = [flag for flag, value in (("--tasks", args.tasks), ("--trials", args.trials)) if value is None]
    if missing:
        raise UserError(f"cluster-script --search needs {' and '.join(missing)}")
    job = search_array_job(args.project, args.tasks, args.trials, head_only=args.head_only, space=tuple(args.space),
                           run_dir=args.run_dir, storage=args.storage,
                           gpus_per_task=1 if args.gpus_per_node is None else args.gpus_per_node,
                           cpus_per_task=args.cpus_per_task, partition=args.partition, time_limit=args.time)
    return _write_script(args, render_search(job),
                         f"{job.tasks} array task(s) searching {job.trials} trial(s), journal {job.storage}")


HANDLERS: dict = {"cluster-script": _cluster_script}
