"""The `transfer-studio` command: gui (default), demo-data, layers, train, predict.

Every sub-command is a thin layer over the engine. Bad input ends with one line on stderr and
exit code 2; a run that fails (diverged, frozen tensors changed) or a failed parity check with 1.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import NoReturn
import sys
import time
from pathlib import Path

from engine.config import (AUGMENTATIONS, NUMBER_RULES, OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES, DataConfig,
                           CLASS_WEIGHTS, PlanConfig, PlanEdit, RunConfig, TrainConfig, load_project, number_problem)
from engine.errors import RunFailed, UserError, out_of_memory_message
from engine.export import ParityError

from app import cli_cluster, cli_data, cli_guidance, cli_insight

# Sub-commands that live in modules of their own: each has add_commands(sub, number) and HANDLERS.
COMMAND_MODULES = (cli_insight, cli_guidance, cli_data, cli_cluster)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _PlanEditAction(argparse.Action):
    """Collects --freeze/--unfreeze/--lr/--train-norm into one list, in the order given."""

    def __call__(self, parser, namespace, value, option_string=None):
        edits = list(getattr(namespace, "edits", None) or [])
        if option_string == "--freeze":
            edits.append(PlanEdit(value, frozen=True))
        elif option_string == "--unfreeze":
            edits.append(PlanEdit(value, frozen=False))
        elif option_string == "--train-norm":
            edits.append(PlanEdit(value, train_norm=True))
        else:
            module, sep, lr_text = value.rpartition("=")
            if not sep:
                parser.error(f"--lr expects MODULE=LR, got '{value}'")
            try:
                lr = float(lr_text)
            except ValueError:
                parser.error(f"--lr {value}: '{lr_text}' is not a number")
            problem = number_problem("lr", lr)
            if problem:
                parser.error(f"--lr {value}: {problem}")
            edits.append(PlanEdit(module, lr=lr))
        namespace.edits = edits


def _number(key: str):
    """An argparse type for the setting `key`, checked by the rules project files and the window
    use too (engine.config.NUMBER_RULES): a bad value is one usage line, exit 2."""
    rule = NUMBER_RULES[key]

    def parse(text: str):
        try:
            value = int(text) if rule.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a {'whole ' if rule.kind is int else ''}number") from None
        problem = number_problem(key, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = key
    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="torchvision architecture, e.g. resnet50, efficientnet_b0")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH to a state dict (.pt/.pth/.safetensors)")


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan (what is frozen, at what LR); flags apply after the strategy, in order")
    g.add_argument("--strategy", choices=STRATEGIES, default="fine-tune")
    g.add_argument("--base-lr", type=_number("plan.base_lr"), default=1e-3, help="LR of every module without its own")
    g.add_argument("--discriminative-factor", type=_number("plan.discriminative_factor"), default=2.6, help="LR ratio between neighbouring stages")
    g.add_argument("--gradual-every", type=_number("plan.gradual_every"), default=1, help="gradual: epochs between unfreezing stages")
    g.add_argument("--freeze", action=_PlanEditAction, metavar="MODULE", help="freeze a module and its subtree")
    g.add_argument("--unfreeze", action=_PlanEditAction, metavar="MODULE", help="unfreeze a module and its subtree")
    g.add_argument("--lr", action=_PlanEditAction, metavar="MODULE=LR", help="LR of a module and its subtree")
    g.add_argument("--train-norm", action=_PlanEditAction, metavar="MODULE",
                   help="let a frozen module's norm layers update their running statistics")


def _plan_config(args) -> PlanConfig:
    return PlanConfig(strategy=args.strategy, base_lr=args.base_lr, discriminative_factor=args.discriminative_factor,
                      gradual_every=args.gradual_every, edits=tuple(getattr(args, "edits", ())))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder (default: the built-in demo dataset)")
    p.add_argument("--project", help="project file with every setting; flags given here override its values")
    p.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run from its last completed epoch with its own settings "
                            "(--epochs sets the new total; --device and --workers may change)")
    _add_model_args(p)
    _add_plan_args(p)
    t = TrainConfig()
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=t.optimizer)
    p.add_argument("--weight-decay", type=_number("train.weight_decay"), default=t.weight_decay)
    p.add_argument("--schedule", choices=SCHEDULES, default=t.schedule)
    p.add_argument("--warmup-epochs", type=_number("train.warmup_epochs"), default=t.warmup_epochs)
    p.add_argument("--label-smoothing", type=_number("train.label_smoothing"), default=t.label_smoothing)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=t.class_weights,
                   help="auto: a class-weighted loss when the largest class has 3x the smallest or more")
    p.add_argument("--epochs", type=_number("train.epochs"), default=None, help=f"number of epochs (default {t.epochs})")
    p.add_argument("--batch-size", type=_number("train.batch_size"), default=t.batch_size,
                   help="images per step, over all processes: with --nproc N each process takes batch-size / N")
    p.add_argument("--image-size", type=_number("data.image_size"), default=DataConfig().image_size)
    p.add_argument("--augment", choices=AUGMENTATIONS, default=DataConfig().augment)
    p.add_argument("--val-fraction", type=_number("data.val_fraction"), default=DataConfig().val_fraction)
    p.add_argument("--workers", type=_number("data.num_workers"), default=None, help="data loader workers (default: automatic)")
    p.add_argument("--no-feature-cache", action="store_true", help="never train the head on cached features")
    p.add_argument("--feature-views", type=_number("train.feature_views"), default=t.feature_views,
                   help="frozen trunk with augmentation: cache the trunk features of this many augmented views "
                        "per image, one drawn per epoch (0: augmented images through the trunk every epoch)")
    p.add_argument("--adapt-norm", action="store_true",
                   help="adapt normalization statistics (AdaBN): re-estimate BatchNorm statistics on the training "
                        "images before training; for data far from the weights' (e.g. digits vs ImageNet)")
    p.add_argument("--device", default=t.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, default=t.precision)
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN autotune convolutions (slow first epoch, may pay off on long runs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    p.add_argument("--patience", type=_number("train.early_stopping_patience"), default=0, help="early stopping after N epochs without improvement")
    p.add_argument("--seed", type=_number("train.seed"), default=t.seed)
    p.add_argument("--no-telemetry", action="store_true",
                   help="skip the per-layer gradient norms and update ratios (sampled about twice a second)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--folds", type=_number("suspects.folds"), default=None, metavar="K",
                   help="K-fold cross-validation: train K times, each fold held out once (runs in OUT/fold-k); "
                        "prints each fold's val accuracy and their mean ± standard deviation (seconds per fold with "
                        "a frozen trunk: its features are computed once)")
    p.add_argument("--json", action="store_true", help="last stdout line: a JSON summary")
    p.add_argument("--events-jsonl", action="store_true",
                   help="print every event (status, started, batch, epoch, result or failed) as one JSON line on stdout")
    p.add_argument("--control-file", metavar="FILE",
                   help="pause, continue or stop the run by writing 'pause', 'run' or 'stop' into FILE "
                        "(every process reads it; they act at the same step)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train as N local processes through torchrun (DistributedDataParallel; gloo on CPU, one GPU "
                        "each on CUDA); under torchrun itself, rank and world size come from its environment")
    p.add_argument("--sync-bn", action="store_true",
                   help="several CUDA processes: trainable BatchNorm layers share batch statistics (SyncBatchNorm)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="transfer-studio",
                            description="Point-and-click transfer learning of image classifiers.")
    sub = parser.add_subparsers(dest="command", parser_class=_OneLineParser)

    gui = sub.add_parser("gui", help="open the window (the default)")
    gui.add_argument("--data", help="dataset folder to open (default: the built-in demo dataset)")
    gui.add_argument("--project", help="project file to open")

    demo = sub.add_parser("demo-data", help="write a synthetic ImageFolder dataset")
    demo.add_argument("dir")
    demo.add_argument("--classes", type=_number("demo.classes"), default=4)
    demo.add_argument("--per-class", type=_number("demo.per_class"), default=60)
    demo.add_argument("--size", type=_number("demo.size"), default=96)
    demo.add_argument("--seed", type=_number("demo.seed"), default=0)

    layers = sub.add_parser("layers", help="print the layer tree with frozen flags, parameter counts and LRs")
    _add_model_args(layers)
    layers.add_argument("--classes", type=_number("layers.classes"), required=True, help="number of classes of the new head")
    layers.add_argument("--weight-decay", type=_number("train.weight_decay"), default=0.01)
    layers.add_argument("--depth", type=_number("layers.depth"), default=None, help="show modules down to this depth")
    layers.add_argument("--json", action="store_true")
    _add_plan_args(layers)
    cli_guidance.add_preview_args(layers, _number)

    train = sub.add_parser("train", help="train a classifier on a folder of images")
    _add_train_args(train)

    export = sub.add_parser("export", help="export a checkpoint (pt, safetensors, torchscript, onnx, pt2) with a "
                                           "parity check")
    export.add_argument("checkpoint")
    export.add_argument("--format", action="append", choices=("pt", "safetensors", "torchscript", "onnx", "pt2"),
                        help="repeat for several; default: all but pt2 (torch.export, which needs --format pt2)")
    export.add_argument("--out", help="output file (one format) or folder (several)")
    export.add_argument("--tolerance", type=_number("export.tolerance"), default=1e-4, help="largest allowed fp32 logit difference")
    export.add_argument("--parity-images", type=_number("export.parity_images"), default=32, help="validation images to compare on")
    export.add_argument("--json", action="store_true")

    predict = sub.add_parser("predict", help="classify images with a checkpoint or an exported file (any format)")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=_number("predict.top_k"), default=5)
    predict.add_argument("--trust", action="store_true",
                         help="load a .pt2 this installation did not export (loading it unpickles, which can run code)")
    predict.add_argument("--json", action="store_true")
    for commands in COMMAND_MODULES:
        commands.add_commands(sub, _number)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "gui"
    try:
        if command == "gui":
            return _gui(getattr(args, "data", None), getattr(args, "project", None))
        if command == "train":
            return _train(args, list(sys.argv[1:] if argv is None else argv))
        handlers = {"demo-data": _demo_data, "layers": _layers, "export": _export, "predict": _predict}
        for commands in COMMAND_MODULES:
            handlers.update(commands.HANDLERS)
        return handlers[command](args)
    except (RunFailed, ParityError, UserError) as exc:  # a failed run 1, bad input 2
        from engine.launch import report_error  # under torchrun also for the launcher to read

        report_error(str(exc))
        return 1 if isinstance(exc, (RunFailed, ParityError)) else 2
    except KeyboardInterrupt:
        print("\ntransfer-studio: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        message = out_of_memory_message(exc, command)
        if message is None:
            raise  # not about memory: a bug, and its traceback is needed
        from engine.launch import report_error

        report_error(message)
        return 1


def _gui(data: str | None, project: str | None) -> int:
    from app.main_window import run_gui  # Qt is imported only when a window is wanted

    return run_gui(data=data, project=project)


def _demo_data(args) -> int:
    from engine.demo import write_demo_dataset

    if not 2 <= args.classes <= 8 or args.per_class < 1 or args.size < 16:
        raise UserError("demo-data needs 2..8 classes, --per-class >= 1 and --size >= 16")
    root = write_demo_dataset(args.dir, args.classes, args.per_class, args.size, args.seed)
    print(f"wrote {args.classes} x {args.per_class} images to {root}")
    return 0


def _layers(args) -> int:
    from engine.models import build_model
    from engine.plan import build_plan, describe_plan, summary_line

    built = build_model(args.model, args.classes, args.weights)
    plan = build_plan(_plan_config(args), built.info)
    report = describe_plan(built.info, plan, args.weight_decay)
    if args.preview:
        report.update(cli_guidance.layers_schedule(args, built, plan))
    if args.json:
        print(json.dumps(report))
        return 0
    for note in built.notes:
        print(f"# {note}")
    print(f"{'module':<44} {'type':<22} {'params':>12} {'trainable':>12}  frozen  lr")
    for m in report["modules"]:
        depth = 0 if m["name"] == "" else m["name"].count(".") + 1
        if args.depth is not None and depth > args.depth:
            continue
        name = ("  " * depth + (m["name"].rpartition(".")[2] or args.model))[:44]
        lr = f"{m['lr']:.3g}" + ("" if not m["lr_inherited"] else " (inherited)")
        when = f"  unfreezes at epoch {m['unfreeze_epoch'] + 1}" if m["unfreeze_epoch"] is not None else ""
        print(f"{name:<44} {m['type'][:22]:<22} {m['params']:>12,} {m['trainable_params']:>12,}  "
              f"{'yes' if m['frozen'] else 'no ':<6}  {lr}{when}")
    print("\n" + summary_line(report))
    for g in report["param_groups"]:
        print(f"  lr {g['lr']:.3g}  wd {g['weight_decay']:g}  {len(g['params'])} tensors  ({g['label']})")
    if args.preview:
        cli_guidance.print_schedule(report["schedule"])
    return 0


# train flag (argparse dest) -> (config section, field); a flag given on the command line wins over
# the project file, and on --resume only the flags in RESUMABLE may change.
_TRAIN_FLAGS = {
    "data": ("data", "root"), "val_fraction": ("data", "val_fraction"), "image_size": ("data", "image_size"),
    "augment": ("data", "augment"), "workers": ("data", "num_workers"), "model": ("model", "arch"),
    "weights": ("model", "weights"), "strategy": ("plan", "strategy"), "base_lr": ("plan", "base_lr"),
    "discriminative_factor": ("plan", "discriminative_factor"), "gradual_every": ("plan", "gradual_every"),
    "optimizer": ("train", "optimizer"), "weight_decay": ("train", "weight_decay"), "schedule": ("train", "schedule"),
    "warmup_epochs": ("train", "warmup_epochs"), "label_smoothing": ("train", "label_smoothing"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "device": ("train", "device"),
    "precision": ("train", "precision"), "cudnn_benchmark": ("train", "cudnn_benchmark"),
    "compile": ("train", "compile"), "patience": ("train", "early_stopping_patience"), "seed": ("train", "seed"),
    "no_telemetry": ("train", "telemetry"), "no_feature_cache": ("data", "feature_cache"),
    "feature_views": ("train", "feature_views"), "adapt_norm": ("train", "adapt_norm"),
    "class_weights": ("train", "class_weights"), "sync_bn": ("train", "sync_bn"),
}
_NEGATED = {"no_telemetry", "no_feature_cache"}  # store_true flags that switch a setting off
RESUMABLE = {"epochs", "device", "workers"}  # what may differ when a run continues


def given_train_flags(argv: list[str]) -> dict:
    """The train flags actually typed (dest -> value), without argparse's defaults."""
    parser = _OneLineParser(prog="transfer-studio train")
    _add_train_args(parser)
    for action in parser._actions:  # noqa: SLF001 - argparse has no public way to drop defaults
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv[argv.index("train") + 1:]))


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def train_config_from_args(args, given: dict) -> RunConfig:
    from engine.demo import demo_note, ensure_demo_dataset

    if args.resume and args.project:
        raise UserError("--resume continues a run with its own settings; it cannot take --project as well")
    if args.resume:
        from engine.run_folder import RunFolder

        refused = [_flag(d) for d in sorted(given) if (d in _TRAIN_FLAGS or d == "out") and d not in RESUMABLE]
        if given.get("edits"):
            refused.append("--freeze/--unfreeze/--lr/--train-norm")
        if refused:
            flags = ", ".join(refused)
            raise UserError(f"{flags}: a continued run keeps the settings it started with (only --epochs, "
                            f"--device and --workers may change); start a new run to change them")
        base = RunFolder(args.resume).load_config()
        return replace(_with_flags(base, given), out_dir=args.resume)
    base = load_project(args.project) if args.project else RunConfig(data=DataConfig(root=""))
    config = _with_flags(base, given)
    if not config.data.root:
        config = replace(config, data=replace(config.data, root=str(ensure_demo_dataset())))
        if demo_note():
            print(f"transfer-studio: note: {demo_note()}", file=sys.stderr)
    out = args.out or config.out_dir or f"runs/{config.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    return replace(config, out_dir=out)


def _with_flags(config: RunConfig, given: dict) -> RunConfig:
    """`config` with every flag the person typed applied; plan edits are added after the file's."""
    sections = {name: {} for name in ("data", "model", "plan", "train")}
    for dest, value in given.items():
        if dest in _TRAIN_FLAGS:
            section, field_name = _TRAIN_FLAGS[dest]
            sections[section][field_name] = (not value) if dest in _NEGATED else value
    plan = replace(config.plan, **sections["plan"])
    if given.get("edits"):
        plan = replace(plan, edits=plan.edits + tuple(given["edits"]))
    return replace(config, data=replace(config.data, **sections["data"]),
                   model=replace(config.model, **sections["model"]), plan=plan,
                   train=replace(config.train, **sections["train"]))


def _train(args, argv: list[str]) -> int:
    from app.progress import ProgressPrinter
    from engine.distributed import ProcessGroup, lost_processes_fail_the_run
    from engine.event_lines import EventLines
    from engine.events import Callbacks
    from engine.remote_control import FileControl
    from engine.run_setup import select_device
    from engine.trainer import fit

    if args.folds is not None and args.resume:
        raise UserError("--folds trains new runs; it cannot continue one (--resume)")
    config = train_config_from_args(args, given_train_flags(argv))
    config.validate()
    if args.folds is not None:
        return _cross_validate(args, config)
    group = ProcessGroup.from_env()
    if group.is_distributed and args.nproc not in (None, 1):
        raise UserError("--nproc starts torchrun itself: under torchrun, leave it out")
    # --nproc, else the project's train.processes; under torchrun, its own world size decides
    processes = 1 if group.is_distributed else args.nproc if args.nproc is not None else config.train.processes
    if processes != 1:
        return _train_as_processes(args, argv, config, processes)
    progress = ProgressPrinter(sys.stderr) if group.is_main else Callbacks()  # rank 0 alone prints
    events = EventLines(sys.stdout, progress) if args.events_jsonl and group.is_main else None
    control = FileControl(args.control_file, group) if args.control_file else None
    try:
        # A collective failing because another rank failed first: one line here, that rank's error the cause.
        with group.started(select_device(config.train.device).type), lost_processes_fail_the_run(group):
            # Started by torchrun without --out: every rank trains in rank 0's default run folder.
            config = replace(config, out_dir=group.gather_objects(config.out_dir)[0])
            result = fit(config, events or progress, control, resume=bool(args.resume), group=group)
    except (UserError, RunFailed) as exc:
        if events:
            events.on_failed(str(exc))
        raise
    if not group.is_main:
        return 0
    if isinstance(progress, ProgressPrinter):
        progress.close()
    for s in result.skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    best = f"{result.best_val_accuracy:.4f}" if result.best_val_accuracy is not None else "n/a"
    print(f"best val accuracy {best} at epoch {result.best_epoch}; checkpoint {result.checkpoint}", file=sys.stderr)
    if events:
        events.on_result(result)
    if args.json:
        print(json.dumps(result.summary()))
    return 0


def _cross_validate(args, config: RunConfig) -> int:
    """`train --folds K`: one run per fold, then each fold's accuracy and the mean ± standard deviation."""
    from app.progress import ProgressPrinter
    from engine.folds import cross_validate

    from engine.distributed import ProcessGroup

    if (args.nproc is not None and args.nproc != 1) or ProcessGroup.from_env().is_distributed:
        raise UserError("--folds trains its folds one after another in one process: leave --nproc out "
                        "and start it without torchrun")
    if args.events_jsonl or args.control_file:
        raise UserError("--folds prints one line per fold: --events-jsonl and --control-file are for single runs")
    progress = ProgressPrinter(sys.stderr)

    def on_fold(fold) -> None:
        last = f"{fold.val_accuracy:.2%}" if fold.val_accuracy is not None else "n/a"
        print(f"fold {fold.fold}/{args.folds}: val accuracy {last} on {fold.val_images} image(s) "
              f"(trained on {fold.train_images}); {fold.run_dir}", flush=True)

    report = cross_validate(config, args.folds, progress, on_fold=on_fold)
    progress.close()
    print(report.summary_line())
    if args.json:
        print(json.dumps(report.to_json()))
    return 0


def _train_as_processes(args, argv: list[str], config: RunConfig, processes: int) -> int:
    """`train --nproc N`: what can be refused is refused here, once, before N processes start;
    then the same command without --nproc runs under torchrun, with the run folder (and the
    dataset) this process resolved, so every rank trains the same run."""
    import torch

    from engine.distributed import ProcessGroup
    from engine.launch import launch_local, without_option
    from engine.run_folder import RunFolder
    from engine.run_setup import select_device
    from engine.trainer import processes_problem

    if processes < 2:
        raise UserError(f"--nproc {processes}: give 2 or more processes (or leave --nproc out)")
    problem = processes_problem(config, ProcessGroup(world_size=processes))
    if problem:
        raise UserError(problem)
    device = select_device(config.train.device)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise UserError(f"{processes} processes need a GPU each; this machine has {torch.cuda.device_count()}")
    rest = without_option(argv[argv.index("train") + 1:], "--nproc")
    if not args.resume:
        RunFolder(config.out_dir).refuse_if_used()
        rest += ["--out", config.out_dir, "--data", config.data.root]
    return launch_local(processes, "app.cli", ["train", *rest])


def _export(args) -> int:
    from engine.export import DEFAULT_FORMATS, default_path, export, parity_batch

    formats = args.format or list(DEFAULT_FORMATS)
    checkpoint = Path(args.checkpoint)
    batch = parity_batch(checkpoint, args.parity_images)
    reports = []
    for fmt in formats:
        out = None
        if args.out and len(formats) == 1 and not Path(args.out).is_dir():
            out = Path(args.out)
        elif args.out:
            out = default_path(checkpoint, fmt, Path(args.out))
        report = export(checkpoint, fmt, out, batch, args.tolerance)
        reports.append(report.to_dict())
        print(f"{fmt:<12} {report.path}  top-1 agreement {report.top1_agreement:.1%} · largest logit difference "
              f"{report.max_abs_logit_diff:.2e} on {report.images} images", file=sys.stderr)
    if args.json:
        print(json.dumps(reports))
    return 0


def _predict(args) -> int:
    from engine.data import Preprocessing
    from engine.export import load_any
    from engine.predict import preprocess, top_k

    if args.top_k < 1:
        raise UserError("--top-k must be >= 1")
    model = load_any(args.checkpoint, trust=args.trust)
    paths = [Path(p) for p in args.images]
    batch = preprocess(paths, Preprocessing.from_dict(model.preprocessing))
    results = top_k(model.logits(batch), model.class_names, args.top_k)
    if args.json:
        print(json.dumps([{"image": str(p), "top_k": r} for p, r in zip(paths, results)]))
        return 0
    for path, ranked in zip(paths, results):
        print(f"{path}: " + ", ".join(f"{r['class']} {r['probability']:.3f}" for r in ranked))
    return 0


def run(argv: list[str] | None = None) -> NoReturn:
    """The command's entry point: main(), then exit with its code.

    After `train` the interpreter's teardown is skipped (os._exit, once stdout and stderr are
    flushed): unloading torch alone takes 0.7 s here, a tenth of a short fine-tuning run's
    overhead, and by then every file of the run has been written, fsynced and closed."""
    argv = sys.argv[1:] if argv is None else argv
    code = main(argv)
    if argv[:1] == ["train"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
