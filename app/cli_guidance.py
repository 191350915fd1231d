"""Sub-commands advise, lr-find, and `layers --preview`: guidance on strategy and learning rates.

Registered by app.cli: add_commands(sub, number) adds the parsers, HANDLERS maps a command to its
function (args -> exit code). `number(key)` is the argparse type checked by engine.config.NUMBER_RULES.
lr-find takes exactly `train`'s flags and builds its configuration with train's own code, so the
plan it sweeps is the plan `train` would run.
"""

from __future__ import annotations

import argparse

from app.cli_args import add_model_args, add_train_args, train_config_from_args
from app.cli_output import print_json
from engine.errors import UserError


def add_commands(sub, number) -> None:
    """Adds this module's sub-parsers to `sub`."""
    advise = sub.add_parser("advise", help="advise a strategy (and its train flags) from the data and the model")
    advise.add_argument("--data", help="dataset folder (default: the built-in demo dataset)")
    add_model_args(advise)
    advise.add_argument("--image-size", type=number("data.image_size"), default=224)
    advise.add_argument("--val-fraction", type=number("data.val_fraction"), default=0.2,
                        help="share held out for the probes (as train's split)")
    advise.add_argument("--seed", type=number("train.seed"), default=0)
    advise.add_argument("--batch-size", type=number("train.batch_size"), default=32)
    advise.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    advise.add_argument("--no-measure", action="store_true",
                        help="the strategy table alone: no pass of the backbone over the images")
    advise.add_argument("--json", action="store_true")

    lr_find = sub.add_parser("lr-find", help="LR range test: one multiplier over the whole plan (ratios kept)")
    add_train_args(lr_find)
    for action in lr_find._actions:  # noqa: SLF001 - as app.cli_args.given_train_flags: only typed flags count
        action.default = argparse.SUPPRESS
    lr_find.add_argument("--steps", type=number("lr_find.steps"), default=100, help="steps of the sweep")
    lr_find.add_argument("--start", type=number("lr_find.start"), default=1e-4, help="first multiplier of the plan's LRs")
    lr_find.add_argument("--end", type=number("lr_find.end"), default=1e3, help="last multiplier of the plan's LRs")
    lr_find.add_argument("--module", default=None,
                         help="sweep only this module's LR; every other group stays at its planned LR")


def add_preview_args(layers: argparse.ArgumentParser, number) -> None:
    """`layers --preview`: the planned LR of every group and what trains, epoch by epoch."""
    from engine.config import SCHEDULES, TrainConfig

    t = TrainConfig()
    g = layers.add_argument_group("schedule preview (--preview)")
    g.add_argument("--preview", action="store_true", help="add the LR schedule of every epoch")
    g.add_argument("--epochs", type=number("train.epochs"), default=t.epochs)
    g.add_argument("--schedule", choices=SCHEDULES, default=t.schedule)
    g.add_argument("--warmup-epochs", type=number("train.warmup_epochs"), default=t.warmup_epochs)
    g.add_argument("--steps-per-epoch", type=number("layers.steps_per_epoch"), default=None,
                   help="optimizer steps per epoch (or give --data and --batch-size)")
    g.add_argument("--data", help="dataset folder: its training split gives the steps per epoch")
    g.add_argument("--batch-size", type=number("train.batch_size"), default=t.batch_size)
    g.add_argument("--val-fraction", type=number("data.val_fraction"), default=0.2)


def layers_schedule(args, built, plan) -> dict:
    """{"steps_per_epoch", "schedule": [{"epoch", "lrs", "trainable"}]} for `layers --preview`."""
    from engine.config import TrainConfig
    from engine.plan.optimization import schedule_preview

    steps = _steps_per_epoch(args)
    train = TrainConfig(epochs=args.epochs, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                        weight_decay=args.weight_decay)
    return {"steps_per_epoch": steps,
            "schedule": schedule_preview(built.model, built.info, plan, train, steps)}


def print_schedule(schedule: list[dict]) -> None:
    print("\nschedule (LR of each group at the end of the epoch, as metrics.jsonl records it)")
    for entry in schedule:
        lrs = ", ".join(f"{label} {lr:.3g}" for label, lr in entry["lrs"].items())
        print(f"  epoch {entry['epoch']:>3}: {lrs}  · trains {', '.join(entry['trainable']) or 'nothing'}")


def _steps_per_epoch(args) -> int:
    if args.steps_per_epoch is not None:
        return args.steps_per_epoch
    if not args.data:
        raise UserError("--preview needs --data DIR (with --batch-size) or --steps-per-epoch N to know an "
                        "epoch's steps")
    from engine.data.dataset import batches_per_epoch, scan_dataset

    scan = scan_dataset(args.data, args.val_fraction, 0)
    if len(scan.class_names) != args.classes:
        raise UserError(f"{args.data} has {len(scan.class_names)} classes but --classes says {args.classes}")
    return batches_per_epoch(len(scan.train), args.batch_size)


# --- advise -----------------------------------------------------------------------------------


def _advise(args) -> int:
    from engine.insight.advisor import advise
    from engine.data.dataset import scan_dataset
    from engine.data.demo import ensure_demo_dataset
    from engine.model.devices import select_device

    root = args.data or str(ensure_demo_dataset())
    scan = scan_dataset(root, args.val_fraction, args.seed)
    if scan.task != "single-label":  # its rules (data per class, the strategy table) are single-label's
        raise UserError(f"advise supports single-label data only; {root} is {scan.task}")
    advice = advise(scan, args.model, args.weights, image_size=args.image_size, measure=not args.no_measure,
                    batch_size=args.batch_size, device=select_device(args.device))
    if args.json:
        print_json(advice.to_dict())
        return 0
    print(f"advice: {advice.strategy}")
    for reason in advice.reasons:
        print(f"  - {reason}")
    print("train with: transfer-studio train --data " + _quoted(root) + f" --model {args.model} "
          f"--weights {_quoted(args.weights)} " + " ".join(advice.flags))
    return 0


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --- lr-find ----------------------------------------------------------------------------------

_OWN = {"steps", "start", "end", "module", "json", "command"}
# train's flags (argparse dest) about a run's folder, its processes and its output: none is a sweep's
_NOT_FOR_LR_FIND = ("resume", "out", "nproc", "folds", "control_file", "events_jsonl", "no_tensorboard",
                    "mlflow", "mlflow_experiment")


def _lr_find(args) -> int:
    import sys

    from app.progress import ProgressPrinter
    from engine.insight.lr_finder import find_lr

    given = {k: v for k, v in vars(args).items() if k not in _OWN}
    not_applicable = ["--" + dest.replace("_", "-") for dest in _NOT_FOR_LR_FIND if dest in given]
    if not_applicable:  # train's flags that a sweep would silently ignore
        raise UserError(f"lr-find writes no run and sweeps in this one process: {', '.join(not_applicable)} "
                        f"do not apply")
    if args.start >= args.end:
        raise UserError(f"--start ({args.start:g}) must be below --end ({args.end:g})")
    config = train_config_from_args(argparse.Namespace(resume=None, project=given.get("project"), out="lr-find"),
                                    given)
    config.validate()
    progress = ProgressPrinter(sys.stderr)
    result = find_lr(config, steps=args.steps, start=args.start, end=args.end, module=args.module,
                     callbacks=progress)
    progress.close()
    if getattr(args, "json", False):
        print_json({**result.to_dict(), "module": args.module})
        return 0
    every = max(1, len(result.curve) // 20)
    print(f"{'multiplier':>12} {'base LR':>12} {'loss':>10}")
    for point in result.curve[::every]:
        print(f"{point.multiplier:>12.4g} {point.multiplier * result.base_lr:>12.4g} {point.loss:>10.4f}")
    print(f"stopped: {result.stopped} after {len(result.curve)} steps")
    if result.suggestion is None:
        print("too few steps to suggest a multiplier")
        return 0
    for s in (result.suggestion, *result.alternatives):
        what = f"{args.module}'s LR" if args.module else "every LR of the plan"
        print(f"{s.rule:>11}: multiply {what} by {s.multiplier:.3g} (to {s.base_lr:.3g})")
    return 0


HANDLERS: dict = {"advise": _advise, "lr-find": _lr_find}
