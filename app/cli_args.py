"""The command line's shared arguments: model, plan and training flags, and the run config they make.

`train`, `lr-find`, `advise` and `layers` take the same flags; they are declared once here and
turned into a RunConfig (on top of a project file, or of a run being continued) in one place.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from engine.config import (ADAPT_NORM, AUGMENTATIONS, CLASS_WEIGHTS, HEAD_ONLY_BASE_LR, LOSSES, NUMBER_RULES,
                           OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES, TASKS, DataConfig, PlanConfig, PlanEdit,
                           RunConfig, TrainConfig, default_base_lr, number_problem)
from engine.errors import UserError
from engine.model.project import load_project


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class PlanEditAction(argparse.Action):
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


def number_arg(key: str):
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="torchvision architecture (resnet50, efficientnet_b0) or timm:NAME (timm:convnext_atto); see `models`")
    p.add_argument("--weights", default="imagenet", help="imagenet (timm: also pretrained) | none | PATH to a state dict (.pt/.pth/.safetensors)")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan (what is frozen, at what LR); flags apply after the strategy, in order")
    g.add_argument("--strategy", choices=STRATEGIES, default="fine-tune")
    g.add_argument("--base-lr", type=number_arg("plan.base_lr"), default=None,
                   help=f"LR of every module without its own (default {HEAD_ONLY_BASE_LR:g} for feature-extraction, "
                        f"{PlanConfig.base_lr:g} otherwise)")
    g.add_argument("--discriminative-factor", type=number_arg("plan.discriminative_factor"), default=2.6, help="LR ratio between neighbouring stages")
    g.add_argument("--gradual-every", type=number_arg("plan.gradual_every"), default=1, help="gradual: epochs between unfreezing stages")
    g.add_argument("--layer-decay", type=number_arg("plan.layer_decay"), default=0.75,
                   help="layer-decay: the stage group at depth i of L trains at base LR * d^(L-i)")
    g.add_argument("--freeze", action=PlanEditAction, metavar="MODULE", help="freeze a module and its subtree")
    g.add_argument("--unfreeze", action=PlanEditAction, metavar="MODULE", help="unfreeze a module and its subtree")
    g.add_argument("--lr", action=PlanEditAction, metavar="MODULE=LR", help="LR of a module and its subtree")
    g.add_argument("--train-norm", action=PlanEditAction, metavar="MODULE",
                   help="let a frozen module's norm layers update their running statistics")


def plan_config(args) -> PlanConfig:
    base_lr = args.base_lr if args.base_lr is not None else default_base_lr(args.strategy)
    return PlanConfig(strategy=args.strategy, base_lr=base_lr, discriminative_factor=args.discriminative_factor,
                      gradual_every=args.gradual_every, layer_decay=args.layer_decay, edits=tuple(getattr(args, "edits", ())))


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder, or a labels CSV (path + labels or value columns) "
                                   "(default: the built-in demo dataset)")
    p.add_argument("--task", choices=TASKS, default=DataConfig().task,
                   help="auto: from the data (CSV labels column: multi-label, value column: regression; folders: "
                        "single-label)")
    p.add_argument("--project", help="project file with every setting; flags given here override its values")
    p.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run from its last completed epoch with its own settings "
                            "(--epochs sets the new total; --device and --workers may change)")
    add_model_args(p)
    add_plan_args(p)
    t = TrainConfig()
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=t.optimizer)
    p.add_argument("--weight-decay", type=number_arg("train.weight_decay"), default=t.weight_decay)
    p.add_argument("--schedule", choices=SCHEDULES, default=t.schedule)
    p.add_argument("--warmup-epochs", type=number_arg("train.warmup_epochs"), default=t.warmup_epochs)
    p.add_argument("--label-smoothing", type=number_arg("train.label_smoothing"), default=t.label_smoothing)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=t.class_weights,
                   help="auto: a class-weighted loss when the largest class has 3x the smallest or more")
    p.add_argument("--loss", choices=LOSSES, default=t.loss, help="regression: the loss on the standardised value")
    p.add_argument("--epochs", type=number_arg("train.epochs"), default=None, help=f"number of epochs (default {t.epochs})")
    p.add_argument("--batch-size", type=number_arg("train.batch_size"), default=t.batch_size,
                   help="images per step, over all processes: with --nproc N each process takes batch-size / N")
    p.add_argument("--image-size", type=number_arg("data.image_size"), default=DataConfig().image_size)
    p.add_argument("--augment", choices=AUGMENTATIONS, default=DataConfig().augment)
    p.add_argument("--val-fraction", type=number_arg("data.val_fraction"), default=DataConfig().val_fraction)
    p.add_argument("--workers", type=number_arg("data.num_workers"), default=None, help="data loader workers (default: automatic)")
    p.add_argument("--no-feature-cache", action="store_true", help="never train the head on cached features")
    p.add_argument("--feature-views", type=number_arg("train.feature_views"), default=t.feature_views,
                   help="frozen trunk with augmentation: cache the trunk features of this many augmented views "
                        "per image, one drawn per epoch (0: augmented images through the trunk every epoch)")
    # nargs="?": a bare --adapt-norm (what it was before auto) still means on.
    p.add_argument("--adapt-norm", choices=ADAPT_NORM, nargs="?", const="on", default=t.adapt_norm,
                   help="BatchNorm statistics (AdaBN): 'on' re-estimates them on the training images before "
                        "training, 'off' keeps them as loaded, 'auto' (default) fits the head on cached features "
                        "with both and keeps the better validation balanced accuracy (a tie keeps them as loaded); "
                        "the run prints which and by how much")
    p.add_argument("--device", default=t.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, default=t.precision)
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN autotune convolutions (slow first epoch, may pay off on long runs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    p.add_argument("--patience", type=number_arg("train.early_stopping_patience"), default=0, help="early stopping after N epochs without improvement")
    p.add_argument("--seed", type=number_arg("train.seed"), default=t.seed)
    p.add_argument("--no-telemetry", action="store_true",
                   help="skip the per-layer gradient norms and update ratios (sampled about twice a second)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard event files (RUN/tensorboard: scalars, confusion images, projector, "
                        "hparams; on by default, offline)")
    p.add_argument("--mlflow", metavar="URI",
                   help="also log to MLflow (e.g. sqlite:///mlflow.db, or a server's http URL): parameters, metrics "
                        "per epoch, the checkpoint and its model card (needs pip install 'transfer-studio[mlflow]')")
    p.add_argument("--mlflow-experiment", metavar="NAME", default=None,
                   help="the MLflow experiment (default: transfer-studio)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--folds", type=number_arg("suspects.folds"), default=None, metavar="K",
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


# train flag (argparse dest) -> (config section, field); a flag given on the command line wins over
# the project file, and on --resume only the flags in RESUMABLE may change.
TRAIN_FLAGS = {
    "data": ("data", "root"), "val_fraction": ("data", "val_fraction"), "image_size": ("data", "image_size"),
    "augment": ("data", "augment"), "workers": ("data", "num_workers"), "model": ("model", "arch"),
    "weights": ("model", "weights"), "strategy": ("plan", "strategy"), "base_lr": ("plan", "base_lr"),
    "discriminative_factor": ("plan", "discriminative_factor"), "gradual_every": ("plan", "gradual_every"),
    "layer_decay": ("plan", "layer_decay"),
    "optimizer": ("train", "optimizer"), "weight_decay": ("train", "weight_decay"), "schedule": ("train", "schedule"),
    "warmup_epochs": ("train", "warmup_epochs"), "label_smoothing": ("train", "label_smoothing"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "device": ("train", "device"),
    "precision": ("train", "precision"), "cudnn_benchmark": ("train", "cudnn_benchmark"),
    "compile": ("train", "compile"), "patience": ("train", "early_stopping_patience"), "seed": ("train", "seed"),
    "no_telemetry": ("train", "telemetry"), "no_feature_cache": ("data", "feature_cache"),
    "no_tensorboard": ("train", "tensorboard"),
    "feature_views": ("train", "feature_views"), "adapt_norm": ("train", "adapt_norm"),
    "class_weights": ("train", "class_weights"), "sync_bn": ("train", "sync_bn"),
    "task": ("data", "task"), "loss": ("train", "loss"),
}


_NEGATED = {"no_telemetry", "no_feature_cache", "no_tensorboard"}  # store_true flags that switch a setting off


RESUMABLE = {"epochs", "device", "workers"}  # what may differ when a run continues


def given_train_flags(argv: list[str]) -> dict:
    """The train flags actually typed (dest -> value), without argparse's defaults."""
    parser = OneLineParser(prog="transfer-studio train")
    add_train_args(parser)
    for action in parser._actions:  # noqa: SLF001 - argparse has no public way to drop defaults
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv[argv.index("train") + 1:]))


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def train_config_from_args(args, given: dict) -> RunConfig:
    from engine.data.demo import demo_note, ensure_demo_dataset

    if args.resume and args.project:
        raise UserError("--resume continues a run with its own settings; it cannot take --project as well")
    if args.resume:
        from engine.runs.run_folder import RunFolder

        refused = [_flag(d) for d in sorted(given) if (d in TRAIN_FLAGS or d == "out") and d not in RESUMABLE]
        if given.get("edits"):
            refused.append("--freeze/--unfreeze/--lr/--train-norm")
        if refused:
            flags = ", ".join(refused)
            raise UserError(f"{flags}: a continued run keeps the settings it started with (only --epochs, "
                            f"--device and --workers may change); start a new run to change them")
        base = RunFolder(args.resume).load_config()
        return replace(apply_flags(base, given), out_dir=args.resume)
    base = load_project(args.project) if args.project else RunConfig(data=DataConfig(root=""))
    config = apply_flags(base, given)
    if not config.data.root:
        config = replace(config, data=replace(config.data, root=str(ensure_demo_dataset())))
        if demo_note():
            print(f"transfer-studio: note: {demo_note()}", file=sys.stderr)
    out = args.out or config.out_dir or f"runs/{config.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    return replace(config, out_dir=out)


def apply_flags(config: RunConfig, given: dict) -> RunConfig:
    """`config` with every flag the person typed applied; plan edits are added after the file's."""
    sections = {name: {} for name in ("data", "model", "plan", "train")}
    for dest, value in given.items():
        if dest in TRAIN_FLAGS:
            section, field_name = TRAIN_FLAGS[dest]
            sections[section][field_name] = (not value) if dest in _NEGATED else value
    plan = config.plan.with_strategy(given["strategy"]) if "strategy" in given else config.plan
    plan = replace(plan, **sections["plan"])
    if given.get("edits"):
        plan = replace(plan, edits=plan.edits + tuple(given["edits"]))
    return replace(config, data=replace(config.data, **sections["data"]),
                   model=replace(config.model, **sections["model"]), plan=plan,
                   train=replace(config.train, **sections["train"]))
