"""One immutable description of a run: data, model, plan and training settings.

Start (in the window) or `train` (on the command line) freezes everything the person chose into a
`RunConfig`; the trainer reads only that. It round-trips through JSON, which is both `run.json`
in a run folder and the body of a project file.
"""

from __future__ import annotations

import functools
import json
import math
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import UserError

AUGMENTATIONS = ("none", "light", "standard")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
STRATEGIES = ("feature-extraction", "fine-tune", "discriminative", "gradual", "layer-decay")
PRECISIONS = ("auto", "off", "fp32", "bf16", "fp16")  # "fp32" is another name for "off"
CLASS_WEIGHTS = ("auto", "none", "balanced")  # engine/training/class_weights.py decides what auto means
TASKS = ("auto", "single-label", "multi-label", "regression")  # auto: from the data (engine/data/label_table.py)
LOSSES = ("mse", "huber")  # regression's loss on the standardised target
ADAPT_NORM = ("auto", "on", "off")  # engine/training/norm_choice.py decides what auto means
PROJECT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    root: str = ""
    val_fraction: float = 0.2
    image_size: int = 224
    augment: str = "standard"
    num_workers: int | None = None  # None: chosen from the CPU count and the device
    decoded_cache_mb: int = 2048  # budget for decoded, resized images kept in RAM; 0 turns it off
    feature_cache: bool = True  # train the head on cached trunk features when the trunk is frozen
    task: str = "auto"  # what the data must give; a labels CSV gives multi-label or regression, folders single-label


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    weights: str = "imagenet"  # "imagenet" | "none" | a path to a state dict


@dataclass(frozen=True)
class PlanEdit:
    """One edit the person made on top of the strategy preset, applied in order.

    Setting `frozen` or `lr` on a module sets it for the module's whole subtree (descendants'
    own settings of that field are cleared), as checking a parent in the tree does.
    """

    module: str
    frozen: bool | None = None
    lr: float | None = None
    train_norm: bool | None = None  # let a frozen module's norm layers update their statistics
    inherit_lr: bool = False  # remove the module's own LR so it inherits again


@dataclass(frozen=True)
class PlanConfig:
    strategy: str = "fine-tune"
    base_lr: float = 1e-3
    discriminative_factor: float = 2.6  # each stage below the head trains at LR / factor
    gradual_every: int = 1  # gradual unfreezing: one more stage every this many epochs
    layer_decay: float = 0.75  # layer decay: the stage group at depth i of L trains at base LR * d**(L - i)
    edits: tuple[PlanEdit, ...] = ()

    def with_edit(self, edit: PlanEdit) -> PlanConfig:
        return replace(self, edits=self.edits + (edit,))

    def with_strategy(self, strategy: str) -> PlanConfig:
        """This plan under `strategy`: the base LR follows the strategy's default unless the person set another."""
        keep_lr = self.base_lr != default_base_lr(self.strategy)
        return replace(self, strategy=strategy, base_lr=self.base_lr if keep_lr else default_base_lr(strategy))


# A head trained alone on frozen features wants ten times the LR that moving a pretrained trunk
# tolerates: at 1e-3 with the cosine schedule it was still improving after 10 epochs on every benchmark
# set (docs/benchmarks.md, "The head's default LR").
HEAD_ONLY_BASE_LR = 1e-2


def default_base_lr(strategy: str) -> float:
    return HEAD_ONLY_BASE_LR if strategy == "feature-extraction" else PlanConfig.base_lr


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16/fp16 on CUDA, bf16 on a CPU with native bf16, else fp32
    channels_last: bool = True  # only used on CUDA
    cudnn_benchmark: bool = False  # autotuning costs seconds per layer shape up front; pays only on long runs
    compile: bool = False  # torch.compile the model: slow first steps, faster later ones
    seed: int = 0
    early_stopping_patience: int = 0  # 0: off
    max_batch_events_per_second: float = 20.0
    telemetry: bool = True  # per-module gradient norm and update ratio, sampled about twice a second
    feature_views: int = 3  # frozen trunk + augmentation: cache this many augmented views per image (0: no cache;
    # 3 were as accurate as 4 on the benchmarks' digits and shapes, docs/benchmarks.md, for a quarter fewer passes)
    # AdaBN: "on" re-estimates BatchNorm statistics on the training images first, "off" keeps them as
    # loaded, "auto" fits the head on cached features with both and keeps the better (engine/training/norm_choice.py)
    adapt_norm: str = "auto"
    class_weights: str = "auto"  # auto: a class-weighted loss when the classes are imbalanced 3x or more
    sync_bn: bool = False  # several CUDA processes: trainable BatchNorm layers share their batch statistics
    processes: int = 1  # DDP processes on this machine (gloo on CPU, a GPU each on CUDA); torchrun's own count wins
    tensorboard: bool = True  # event files in RUN/tensorboard (scalars, confusion images, projector, hparams)
    loss: str = "mse"  # regression: mse or huber, on the standardised target


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """The config JSON describes, every key known and every value of its field's type;
        otherwise UserError naming the field, e.g. "data.image_size must be an integer, got 'big'".
        Ranges are validate()'s business."""
        return _build(cls, raw, "")

    def validate(self) -> None:
        """Raise UserError naming the first setting that cannot work. Every number is checked by
        check_number(), the one place the CLI's options, project files and the window share."""
        for key in NUMBER_RULES:
            section, _, name = key.partition(".")
            if section in ("data", "plan", "train"):
                check_number(key, getattr(getattr(self, section), name))
        checks = [
            (self.data.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}"),
            (self.plan.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}"),
            (self.train.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.train.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.train.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.train.class_weights in CLASS_WEIGHTS, f"class weights must be one of {', '.join(CLASS_WEIGHTS)}"),
            (self.data.task in TASKS, f"task must be one of {', '.join(TASKS)}"),
            (self.train.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (self.train.adapt_norm in ADAPT_NORM, f"adapt norm must be one of {', '.join(ADAPT_NORM)}"),
            (bool(self.model.arch), "no architecture given"),
            (bool(self.model.weights), "weights must be 'imagenet', 'none' or a file"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        for edit in self.plan.edits:
            if edit.lr is not None and not (edit.lr > 0 and math.isfinite(edit.lr)):
                raise UserError(f"LR for '{edit.module}' must be > 0 and finite, got {edit.lr}")


SEED_MAX = 2**32 - 1  # numpy's seed range; torch's is wider, and epoch orders derive seeds from it


@dataclass(frozen=True)
class NumberRule:
    label: str  # how the person knows the setting
    kind: type  # int or float (a float must be finite)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself not allowed
    high_open: bool = False
    unit: str = ""  # "px": "at least 16 px" rather than ">= 16"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "a number"
        if self.kind is int and not isinstance(value, int):
            return "a whole number"
        if not math.isfinite(value):
            return "a finite number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (too_low or too_high):
            return None
        if self.unit and too_low and not self.low_open:  # "at least 16 px", "at most 2048 px"
            return f"at least {_num(self.low)} {self.unit}"
        if self.unit and too_high and not self.high_open:
            return f"at most {_num(self.high)} {self.unit}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        return f"{'<' if self.high_open else '<='} {_num(self.high)}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


# Every number a person can set, wherever they set it: CLI options, project files, the window.
NUMBER_RULES: dict[str, NumberRule] = {
    "data.val_fraction": NumberRule("val fraction", float, 0, 1, high_open=True),
    # Upper bounds refuse sizes no memory holds (a 10000 px batch of 8 needs ~10 GB before the model).
    "data.image_size": NumberRule("image size", int, 16, 2048, unit="px"),
    "data.num_workers": NumberRule("loader workers", int, 0),
    "data.decoded_cache_mb": NumberRule("decoded cache budget (MB)", int, 0),
    "plan.base_lr": NumberRule("base LR", float, 0, low_open=True),
    "plan.discriminative_factor": NumberRule("discriminative factor", float, 1),
    "plan.gradual_every": NumberRule("gradual unfreezing interval (epochs)", int, 1),
    "plan.layer_decay": NumberRule("layer decay", float, 0, 1, low_open=True),
    "train.epochs": NumberRule("epochs", int, 1),
    "train.batch_size": NumberRule("batch size", int, 1),
    "train.weight_decay": NumberRule("weight decay", float, 0),
    "train.warmup_epochs": NumberRule("warm-up epochs", float, 0),
    "train.label_smoothing": NumberRule("label smoothing", float, 0, 1, high_open=True),
    "train.seed": NumberRule("seed", int, 0, SEED_MAX),
    "train.early_stopping_patience": NumberRule("early-stopping patience (0: off)", int, 0),
    "train.max_batch_events_per_second": NumberRule("batch events per second", float, 0, low_open=True),
    "train.feature_views": NumberRule("feature views", int, 0, 64),
    "train.processes": NumberRule("processes", int, 1, 256),
    "lr": NumberRule("LR", float, 0, low_open=True),
    "export.tolerance": NumberRule("tolerance", float, 0),
    "export.parity_images": NumberRule("parity images", int, 1),
    "export.calibration_images": NumberRule("calibration images", int, 1, 100_000),
    "export.max_drop": NumberRule("largest accuracy drop (points)", float, 0, 100),
    "demo.classes": NumberRule("demo classes", int, 2, 8),
    "demo.per_class": NumberRule("images per class", int, 1),
    "demo.size": NumberRule("demo image size", int, 16, 1024, unit="px"),
    "demo.seed": NumberRule("seed", int, 0, SEED_MAX),
    "layers.classes": NumberRule("classes", int, 2, 100_000),  # 1e11 classes: a head of terabytes
    "layers.depth": NumberRule("depth", int, 0),
    "layers.steps_per_epoch": NumberRule("steps per epoch", int, 1),
    "lr_find.steps": NumberRule("range-test steps", int, 3),
    # Multipliers of the plan's LRs: beyond these a sweep reaches LRs of no use, or that overflow to inf.
    "lr_find.start": NumberRule("first multiplier", float, 1e-12, 1e6),
    "lr_find.end": NumberRule("last multiplier", float, 1e-12, 1e6),
    "predict.top_k": NumberRule("top-k", int, 1),
    "suspects.folds": NumberRule("folds", int, 2, 100),
    "suspects.threshold": NumberRule("duplicate similarity threshold", float, 0, 1, low_open=True),
    "search.trials": NumberRule("trials", int, 1, 100_000),
    "search.workers": NumberRule("search workers", int, 1, 256),
    "search.tasks": NumberRule("array tasks", int, 1, 10_000),
    "search.timeout": NumberRule("timeout (seconds)", float, 0, low_open=True),
}


def number_problem(key: str, value: Any) -> str | None:
    """Why `value` cannot be the setting `key` (e.g. "train.seed"), in one line; None when it can.
    None (a setting left to choose itself, like data.num_workers) is always fine."""
    if value is None:
        return None
    rule = NUMBER_RULES[key]
    expected = rule.problem(value)
    if expected is None:
        return None
    shown = repr(value) if len(repr(value)) <= 30 else repr(value)[:27] + "..."
    return f"{rule.label} must be {expected}, got {shown}"


def check_number(key: str, value: Any) -> None:
    problem = number_problem(key, value)
    if problem:
        raise UserError(problem)


# Values older files wrote, read as today's: adapt_norm was true/false before "auto" (project files,
# run.json and checkpoints written then still load, meaning what they meant).
LEGACY_VALUES: dict[str, dict[bool, str]] = {"train.adapt_norm": {True: "on", False: "off"}}


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, raw: Any, where: str):
    """An instance of the dataclass `cls` from JSON data, checked field by field."""
    if not isinstance(raw, dict):
        raise UserError(f"{where or 'the configuration'} must be an object ({{...}}), got {shown_value(raw)}")
    names = [f.name for f in fields(cls)]
    unknown = [key for key in raw if key not in names]
    if unknown:
        listed = ", ".join(_join(where, str(key)) for key in unknown)
        raise UserError(f"unknown setting{'s' if len(unknown) > 1 else ''} {listed}")
    values = {}
    for f in fields(cls):
        if f.name in raw:
            path, value = _join(where, f.name), raw[f.name]
            if isinstance(value, bool) and path in LEGACY_VALUES:
                value = LEGACY_VALUES[path][value]
            values[f.name] = _check(value, _field_types(cls)[f.name], path)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise UserError(f"{_join(where, f.name)} is missing")
    return cls(**values)


def _check(value: Any, kind: Any, where: str, or_null: str = "") -> Any:
    """`value` as the type `kind` (bool, int, float, str, X | None, a dataclass, tuple[X, ...])."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where, " or null")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list{or_null}, got {shown_value(value)}")
        return tuple(_check(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if is_dataclass(kind):
        return _build(kind, value, where)
    if kind is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif kind is int:  # True is an int to Python, not to a person writing "epochs": true
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number" if isinstance(value, float) else "a number"
        value = float(value) if ok else value
    elif kind is str:
        ok, expected = isinstance(value, str), "a string"
    else:  # a field type this checker does not know: a programming error, not the person's
        raise TypeError(f"cannot check {where} of type {kind}")
    if not ok:
        raise UserError(f"{where} must be {expected}{or_null}, got {shown_value(value)}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def shown_value(value: Any) -> str:
    """A value as the person wrote it in JSON, short enough for one line."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def save_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    from engine.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2) + "\n").encode())


def save_project(path: str | os.PathLike, config: RunConfig) -> None:
    """A project file is human-readable JSON: the run config plus a format version."""
    save_json_atomic(path, {"transfer_studio_project": PROJECT_FORMAT_VERSION, **config.to_dict()})


