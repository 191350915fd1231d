"""Sub-command search: Optuna over the plan's knobs, each trial an ordinary `train` run.

Registered by app.cli: add_commands(sub, number) adds the parser, HANDLERS maps the command to its
function (args -> exit code). The settings every trial shares come from train's own flags (or a
project file) through train's own code; the knobs the search draws are the engine's
(engine.search.space). `--workers K` runs K processes of this same command on one journal file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from app.cli_args import add_model_args, train_config_from_args
from app.cli_output import note, print_json
from engine.errors import RunFailed, UserError
from engine.events import format_duration

# train's flags a search takes as fixed settings of every trial (argparse dest, as app.cli_args.TRAIN_FLAGS)
_SHARED = {"data", "model", "weights", "image_size", "batch_size", "val_fraction", "seed", "device", "precision",
           "optimizer", "schedule", "warmup_epochs", "class_weights"}


def add_commands(sub, number) -> None:
    """Adds this module's sub-parser to `sub`."""
    from engine.config import CLASS_WEIGHTS, OPTIMIZERS, PRECISIONS, SCHEDULES

    search = sub.add_parser("search", help="search the plan's knobs (Optuna: TPE, median pruning, a journal file "
                                           "several processes share); each trial is a train run")
    fixed = search.add_argument_group("settings every trial shares (default: train's, or the project's)")
    fixed.add_argument("--data", help="dataset folder (default: the built-in demo dataset)")
    fixed.add_argument("--project", help="project file whose settings every trial starts from")
    add_model_args(fixed)
    fixed.add_argument("--image-size", type=number("data.image_size"))
    fixed.add_argument("--batch-size", type=number("train.batch_size"))
    fixed.add_argument("--val-fraction", type=number("data.val_fraction"), help="trials are compared on this share")
    fixed.add_argument("--seed", type=number("train.seed"), help="the split and every trial's seed")
    fixed.add_argument("--device", help="auto | cpu | cuda[:N]")
    fixed.add_argument("--precision", choices=PRECISIONS)
    fixed.add_argument("--optimizer", choices=OPTIMIZERS)
    fixed.add_argument("--schedule", choices=SCHEDULES)
    fixed.add_argument("--warmup-epochs", type=number("train.warmup_epochs"))
    fixed.add_argument("--class-weights", choices=CLASS_WEIGHTS)
    for action in fixed._group_actions:  # noqa: SLF001 - as lr-find: only typed flags override the project
        action.default = argparse.SUPPRESS
    g = search.add_argument_group("the search")
    g.add_argument("--trials", type=number("search.trials"), required=True, metavar="N",
                   help="finished trials (complete or pruned) wanted in the storage in all: the same command "
                        "again continues a search up to N")
    g.add_argument("--head-only", action="store_true",
                   help="feature extraction only: search the head's LR, weight decay, label smoothing and epochs, "
                        "every trial on the same cached trunk features")
    g.add_argument("--space", action="append", default=[], metavar="KNOB=RANGE",
                   help="narrow or fix a knob: base_lr=1e-4:1e-2, epochs=2:5, strategy=fine-tune,discriminative, "
                        "augment=none (repeat for several)")
    g.add_argument("--storage", metavar="FILE", help="Optuna journal file the workers share "
                                                     "(default: OUT/search.journal)")
    g.add_argument("--out", metavar="DIR", help="runs folder of the trials (default: the storage's folder, else "
                                                "runs/search-<model>-<data>)")
    g.add_argument("--workers", type=number("search.workers"), default=1, metavar="K",
                   help="search processes on this machine, all on the one storage")
    g.add_argument("--timeout", type=number("search.timeout"), default=None, metavar="S",
                   help="start no trial after S seconds (trials in flight finish)")
    keep = g.add_mutually_exclusive_group()
    keep.add_argument("--keep-runs", action="store_true", help="keep every trial's run folder, pruned ones too")
    keep.add_argument("--prune-runs", action="store_true", help="keep only the best trial's run folder")
    g.add_argument("--tensorboard", action="store_true",
                   help="write each trial's TensorBoard event files (off: a trial's figures are in its metrics.jsonl)")
    g.add_argument("--json", action="store_true", help="last stdout line: {best, trials, pruned, storage}")
    g.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)  # a worker process's parent pid


def search_job(args):
    """The checked job the flags describe (every refusal a one-line UserError)."""
    from engine.data.dataset import scan_dataset
    from engine.search.space import default_space, narrowed, stage_groups_below_head
    from engine.search.worker import SearchJob, trial_settings

    given = {k: v for k, v in vars(args).items() if k in _SHARED}
    project = getattr(args, "project", None)
    base = train_config_from_args(argparse.Namespace(resume=None, project=project, out="search"), given)
    base = trial_settings(base, tensorboard=args.tensorboard)
    base.validate()
    groups = stage_groups_below_head(base.model.arch, base.data.image_size)
    space = narrowed(default_space(args.head_only, len(groups)), args.space)
    scan = scan_dataset(base.data.root, base.data.val_fraction, base.train.seed)
    if not scan.val:
        raise UserError(f"trials are compared on validation images and {base.data.root} gives none "
                        f"(raise --val-fraction)")
    storage = Path(args.storage).expanduser() if args.storage else None
    out = Path(args.out).expanduser() if args.out else storage.parent if storage else \
        Path("runs") / f"search-{base.model.arch.replace(':', '-')}-{Path(base.data.root).name or 'data'}"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; the trials' run folders need a folder")
    storage = storage or out / "search.journal"
    keep = "all" if args.keep_runs else "best" if args.prune_runs else "default"
    return SearchJob(base=replace(base, out_dir=str(out.absolute())), space=space, stage_groups=groups,
                     trials=args.trials, storage=storage.absolute(), keep=keep, timeout_s=args.timeout)


def _search(args) -> int:
    from engine.search.worker import load_study, run_worker, summary

    job = search_job(args)
    study = load_study(job)  # a bad storage or other settings are refused before any worker starts
    helpers = _Helpers(args, job) if args.workers > 1 and args.worker_of is None else None
    parent = args.worker_of

    def keep_going() -> bool:  # a helper whose search was killed finishes its trial, then stops
        return parent is None or os.getppid() == parent

    with _terminate_as_interrupt(), _share_of_the_cores(args.workers):
        try:
            if helpers and not args.head_only:
                helpers.start()
            # --head-only: helpers start once this worker's first trial has cached the trunk's features
            run_worker(study, job, on_trial=_print_trial, keep_going=keep_going,
                       after_first_trial=helpers.start if helpers else None)
        except BaseException:
            if helpers:
                helpers.stop()  # they fail their trials in flight too, rather than search on alone
            raise
        finally:
            codes = helpers.wait() if helpers else []
    if args.worker_of is not None:
        return 0
    result = summary(study, job)
    if args.json:
        print_json(result)
    else:
        _print_summary(result, job)
    failed = [code for code in codes if code]
    if failed:
        raise RunFailed(f"{len(failed)} of the {len(codes)} other worker process(es) failed (their lines above)")
    if result["best"] is None:
        raise RunFailed(f"no trial completed ({result['pruned']} pruned); see the lines above")
    return 0


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (scancel, a requeue, a parent ending its helpers) ends the search as Ctrl-C does: the trial
    in flight is marked failed at once, rather than left running until it is found stale."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test calling main() from a thread): left as it was
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _share_of_the_cores(workers: int):
    """K workers on one machine: each computes on its share of the cores, not all of them each."""
    import torch

    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _print_trial(outcome) -> None:
    """One line per trial on stderr: how it ended, the study's progress, the best so far, the ETA."""
    if outcome.state == "complete":
        epochs = f"{outcome.epochs_run} epoch{'s' if outcome.epochs_run != 1 else ''}"
        what = f"val accuracy {outcome.value:.4f} ({epochs}, {outcome.seconds:.1f} s)"
    elif outcome.state == "pruned":
        what = f"pruned after epoch {outcome.epochs_run} at val accuracy {outcome.value:.4f} ({outcome.seconds:.1f} s)"
    else:
        what = f"failed ({outcome.seconds:.1f} s): {outcome.error}"
    best = (f"best {outcome.best_value:.4f} (trial {outcome.best_number})" if outcome.best_value is not None
            else "no best yet")
    eta = f" · ETA {format_duration(outcome.eta_seconds)}" if outcome.eta_seconds is not None else ""
    note(f"trial {outcome.number}: {what} · {outcome.finished}/{outcome.trials} done · {best}{eta}")


def _print_summary(result: dict, job) -> None:
    import shlex

    print(f"{result['trials']} trial(s) complete, {result['pruned']} pruned; storage {result['storage']}")
    best = result["best"]
    if best is None:
        return
    print(f"best: trial {best['trial']}, val accuracy {best['value']:.4f}; run {best['run_dir']}")
    model = job.base.model
    print("train with: transfer-studio train --data " + shlex.quote(job.base.data.root) + f" --model {model.arch} "
          f"--weights {shlex.quote(model.weights)} " + " ".join(shlex.quote(f) for f in best["flags"]))


class _Helpers:
    """The other K-1 worker processes: this same command, on the storage and runs folder this process
    resolved, without --workers and --json."""

    def __init__(self, args, job) -> None:
        from engine.distributed.launch import without_option

        argv = list(args.argv[args.argv.index("search") + 1:])
        for option in ("--workers", "--storage", "--out"):
            argv = without_option(argv, option)
        self.argv = [a for a in argv if a != "--json"] + ["--storage", str(job.storage), "--out", job.base.out_dir,
                                                           "--worker-of", str(os.getpid())]
        self.count = args.workers - 1
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        if self.processes:
            return
        from engine.distributed.cluster_script import installation_root

        root = str(installation_root())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (self.count + 1))))
        for _ in range(self.count):
            self.processes.append(subprocess.Popen([sys.executable, "-m", "app.cli", "search", *self.argv],
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self) -> list[int]:
        codes = []
        try:
            for process in self.processes:
                codes.append(process.wait())
        except BaseException:  # interrupted while waiting: the helpers fail their trials in flight and end too
            self.stop()
            for process in self.processes:
                process.wait()
            raise
        return codes


HANDLERS: dict = {"search": _search}
