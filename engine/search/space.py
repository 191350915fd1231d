"""The search space: the plan's own knobs, what a trial draws from them, and the `train` flags of a draw.

A knob is one setting a person can already give `train` (strategy, base LR, weight decay...), plus
`unfreeze_depth`: how many stage groups below the head train (the others frozen by --freeze edits).
Knobs that only mean something for some strategies (the discriminative factor, layer decay, the
gradual interval, the depth) are drawn only for those, so a trial's parameters are exactly what
shaped its run. `--space KNOB=LOW:HIGH` (numbers), `KNOB=A,B` (choices) or `KNOB=VALUE` (fixed)
narrows the defaults; every bound passes the same checks as the flag it stands for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from engine.config import AUGMENTATIONS, STRATEGIES, PlanConfig, PlanEdit, RunConfig, number_problem
from engine.errors import UserError

HEAD_ONLY_KNOBS = ("base_lr", "weight_decay", "label_smoothing", "epochs")
# Strategies whose early stage groups can stay frozen: the depth says how many groups below the head train.
DEPTH_STRATEGIES = ("fine-tune", "discriminative", "layer-decay")


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "float" | "int" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()  # drawn only for these strategies (empty: always)
    config_key: str | None = None  # engine.config.NUMBER_RULES key its bounds are checked by

    @property
    def fixed(self) -> bool:
        return self.low == self.high if self.kind != "choice" else len(self.choices) == 1

    @property
    def fixed_value(self) -> Any:
        if self.kind == "choice":
            return self.choices[0]
        return int(self.low) if self.kind == "int" else float(self.low)

    def describe(self) -> str:
        if self.kind == "choice":
            return ",".join(self.choices)
        if self.fixed:
            return _number(self.fixed_value)
        return f"{_number(self.low)}:{_number(self.high)}" + (" (log)" if self.log else "")


def _number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


@dataclass(frozen=True)
class SearchSpace:
    knobs: tuple[Knob, ...]
    head_only: bool
    depth_groups: int  # stage groups below the head (the largest unfreeze depth)

    def knob(self, name: str) -> Knob:
        return next(k for k in self.knobs if k.name == name)

    def describe(self) -> dict[str, str]:
        """{knob: its range as --space would write it}: what a stored study is compared by."""
        return {k.name: k.describe() for k in self.knobs}


def default_space(head_only: bool, depth_groups: int) -> SearchSpace:
    """Ranges wide enough for most data sets; a head alone takes larger LRs (up to 1: on resnet18's
    digits features the best heads trained at 0.05-0.1, the old range's edge) and more epochs (each
    costs milliseconds on cached features)."""
    if head_only:
        knobs = (
            Knob("base_lr", "float", 1e-4, 1.0, log=True, config_key="plan.base_lr"),
            Knob("weight_decay", "float", 1e-6, 1e-1, log=True, config_key="train.weight_decay"),
            Knob("label_smoothing", "float", 0.0, 0.2, config_key="train.label_smoothing"),
            Knob("epochs", "int", 5, 30, config_key="train.epochs"),
        )
        return SearchSpace(knobs, True, depth_groups)
    knobs = (
        Knob("strategy", "choice", choices=STRATEGIES),
        Knob("unfreeze_depth", "int", 1, max(1, depth_groups), strategies=DEPTH_STRATEGIES),
        Knob("gradual_every", "int", 1, 2, strategies=("gradual",), config_key="plan.gradual_every"),
        Knob("base_lr", "float", 1e-5, 1e-1, log=True, config_key="plan.base_lr"),
        Knob("discriminative_factor", "float", 1.5, 10.0, log=True, strategies=("discriminative", "gradual"),
             config_key="plan.discriminative_factor"),
        Knob("layer_decay", "float", 0.5, 0.95, strategies=("layer-decay",), config_key="plan.layer_decay"),
        Knob("weight_decay", "float", 1e-6, 1e-1, log=True, config_key="train.weight_decay"),
        Knob("label_smoothing", "float", 0.0, 0.2, config_key="train.label_smoothing"),
        Knob("augment", "choice", choices=AUGMENTATIONS),
        Knob("epochs", "int", 3, 15, config_key="train.epochs"),
    )
    return SearchSpace(knobs, False, depth_groups)


def narrowed(space: SearchSpace, specs: Iterable[str]) -> SearchSpace:
    """`space` with each `--space` text applied; UserError (one line) for a knob, range or value that
    cannot be searched."""
    knobs = {k.name: k for k in space.knobs}
    for text in specs:
        name, sep, value = text.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not value.strip():
            raise UserError(f"--space {text!r}: write KNOB=LOW:HIGH, KNOB=A,B or KNOB=VALUE")
        if name not in knobs:
            head = " with --head-only" if space.head_only else ""
            raise UserError(f"--space {text!r}: no knob '{name}'{head}; knobs: {', '.join(knobs)}"
                            + (" (--head-only trains the head alone, with feature extraction)"
                               if space.head_only and name in _all_knob_names() else ""))
        knobs[name] = _narrow(knobs[name], value.strip(), text, space.depth_groups)
    return replace(space, knobs=tuple(knobs.values()))


def _all_knob_names() -> tuple[str, ...]:
    return tuple(k.name for k in default_space(False, 1).knobs)


def _narrow(knob: Knob, value: str, text: str, depth_groups: int) -> Knob:
    if knob.kind == "choice":
        allowed = knob.choices if knob.name != "strategy" else STRATEGIES
        chosen = tuple(dict.fromkeys(c.strip() for c in value.split(",")))
        wrong = [c for c in chosen if c not in allowed]
        if wrong or not chosen:
            raise UserError(f"--space {text!r}: {knob.name} must be among {', '.join(allowed)}")
        return replace(knob, choices=chosen)
    low_text, sep, high_text = value.partition(":")
    low, high = _parse(low_text, knob, text), _parse(high_text if sep else low_text, knob, text)
    if low > high:
        raise UserError(f"--space {text!r}: the low end {_number(low)} is above the high end {_number(high)}")
    for bound in (low, high):
        problem = (number_problem(knob.config_key, bound) if knob.config_key
                   else _depth_problem(bound, depth_groups))
        if problem:
            raise UserError(f"--space {text!r}: {problem}")
    if knob.log and low <= 0 and low != high:
        raise UserError(f"--space {text!r}: {knob.name} is searched on a log scale; its low end must be above 0")
    return replace(knob, low=low, high=high)


def _parse(text: str, knob: Knob, whole: str) -> float:
    try:
        value = int(text) if knob.kind == "int" else float(text)
    except ValueError:
        kind = "a whole number" if knob.kind == "int" else "a number"
        raise UserError(f"--space {whole!r}: {text.strip()!r} is not {kind}") from None
    if not math.isfinite(value):
        raise UserError(f"--space {whole!r}: {text.strip()!r} is not a finite number")
    return value


def _depth_problem(depth: float, groups: int) -> str | None:
    if not 1 <= depth <= groups:
        return f"unfreeze depth must be in [1, {groups}] (stage groups below the head), got {_number(depth)}"
    return None


# --- a trial's draw ----------------------------------------------------------------------------------


def draw(space: SearchSpace, suggest: Callable[[Knob], Any]) -> dict[str, Any]:
    """{knob: value} for every knob that applies to the drawn strategy; `suggest(knob)` draws one
    knob that is not fixed (an Optuna trial's suggest_*), fixed knobs keep their value."""
    values: dict[str, Any] = {}
    strategy = "feature-extraction" if space.head_only else None
    for knob in space.knobs:  # the strategy comes first: the others depend on it
        if knob.strategies and strategy not in knob.strategies:
            continue
        values[knob.name] = knob.fixed_value if knob.fixed else suggest(knob)
        if knob.name == "strategy":
            strategy = values["strategy"]
    return values


def optuna_suggest(trial) -> Callable[[Knob], Any]:
    """An Optuna trial's suggest_* for a knob."""
    def suggest(knob: Knob) -> Any:
        if knob.kind == "choice":
            return trial.suggest_categorical(knob.name, list(knob.choices))
        if knob.kind == "int":
            return trial.suggest_int(knob.name, int(knob.low), int(knob.high), log=knob.log)
        return trial.suggest_float(knob.name, float(knob.low), float(knob.high), log=knob.log)
    return suggest


def grid(space: SearchSpace, points: int = 3) -> list[dict[str, Any]]:
    """Every combination of the space, each numeric range cut into `points` (>= 2) values, log-spaced
    where the knob is (fewer for a short integer range): the exhaustive search a benchmark compares against."""
    def values(knob: Knob) -> list:
        if knob.kind == "choice":
            return list(knob.choices)
        if knob.fixed:
            return [knob.fixed_value]
        if knob.kind == "int":
            return sorted({round(knob.low + (knob.high - knob.low) * i / (points - 1)) for i in range(points)})
        if knob.log:  # 6 significant digits: 0.1, not exp(log(0.1)) = 0.10000000000000006
            lo, hi = math.log(knob.low), math.log(knob.high)
            return [float(f"{math.exp(lo + (hi - lo) * i / (points - 1)):.6g}") for i in range(points)]
        return [float(f"{knob.low + (knob.high - knob.low) * i / (points - 1):.6g}") for i in range(points)]

    combos: list[dict[str, Any]] = [{}]
    for knob in space.knobs:
        grown = []
        for combo in combos:
            strategy = combo.get("strategy", "feature-extraction" if space.head_only else None)
            if knob.strategies and strategy not in knob.strategies:
                grown.append(combo)
                continue
            grown += [{**combo, knob.name: v} for v in values(knob)]
        combos = grown
    return combos


# --- a draw as a run, and as train's flags --------------------------------------------------------------


def trial_config(base: RunConfig, values: dict[str, Any], stage_groups: Sequence[Sequence[str]],
                 out_dir: str) -> RunConfig:
    """`base` with a draw's values: a run config `fit` trains as any other. `stage_groups` are the
    model's stage groups below the head, input first."""
    strategy = values.get("strategy", "feature-extraction")
    plan = PlanConfig(strategy=strategy, base_lr=float(values.get("base_lr", base.plan.base_lr)),
                      discriminative_factor=float(values.get("discriminative_factor",
                                                             base.plan.discriminative_factor)),
                      gradual_every=int(values.get("gradual_every", base.plan.gradual_every)),
                      layer_decay=float(values.get("layer_decay", base.plan.layer_decay)),
                      edits=_depth_edits(values.get("unfreeze_depth"), stage_groups))
    train = replace(base.train, weight_decay=float(values.get("weight_decay", base.train.weight_decay)),
                    label_smoothing=float(values.get("label_smoothing", base.train.label_smoothing)),
                    epochs=int(values.get("epochs", base.train.epochs)))
    # Not searched: a head alone trains on plain cached features, as --head-only promises.
    augment = values.get("augment", "none" if strategy == "feature-extraction" else base.data.augment)
    return replace(base, plan=plan, train=train, data=replace(base.data, augment=augment), out_dir=out_dir)


def _depth_edits(depth: int | None, stage_groups: Sequence[Sequence[str]]) -> tuple[PlanEdit, ...]:
    """--freeze edits on the stage groups below the `depth` nearest the head."""
    if depth is None:
        return ()
    frozen = stage_groups[:max(0, len(stage_groups) - int(depth))]
    return tuple(PlanEdit(stage, frozen=True) for group in frozen for stage in group)


# train flag -> how it reads from a config; the plan's edits are --freeze flags after these.
_FLAGS: tuple[tuple[str, Callable[[RunConfig], Any]], ...] = (
    ("--strategy", lambda c: c.plan.strategy),
    ("--base-lr", lambda c: c.plan.base_lr),
    ("--discriminative-factor", lambda c: c.plan.discriminative_factor),
    ("--gradual-every", lambda c: c.plan.gradual_every),
    ("--layer-decay", lambda c: c.plan.layer_decay),
    ("--weight-decay", lambda c: c.train.weight_decay),
    ("--label-smoothing", lambda c: c.train.label_smoothing),
    ("--epochs", lambda c: c.train.epochs),
    ("--augment", lambda c: c.data.augment),
    # The fixed settings of every trial, given where they differ from train's defaults.
    ("--image-size", lambda c: c.data.image_size),
    ("--val-fraction", lambda c: c.data.val_fraction),
    ("--batch-size", lambda c: c.train.batch_size),
    ("--optimizer", lambda c: c.train.optimizer),
    ("--schedule", lambda c: c.train.schedule),
    ("--warmup-epochs", lambda c: c.train.warmup_epochs),
    ("--class-weights", lambda c: c.train.class_weights),
    ("--seed", lambda c: c.train.seed),
    ("--precision", lambda c: c.train.precision),
    ("--adapt-norm", lambda c: c.train.adapt_norm),  # a head-only search's measured choice (engine.search.worker)
)
_ALWAYS = {"--strategy", "--base-lr", "--weight-decay", "--label-smoothing", "--epochs", "--augment"}


def train_flags(config: RunConfig) -> list[str]:
    """The `train` flags (besides --data, --model and --weights) that give `config`'s plan and
    settings: the searched ones always, the others where they differ from train's defaults. Numbers
    are written by repr, which reads back as the same float."""
    default = RunConfig()
    flags: list[str] = []
    for flag, read in _FLAGS:
        value = read(config)
        if flag in _ALWAYS or value != read(default):
            flags += [flag, repr(value) if isinstance(value, float) else str(value)]
    for edit in config.plan.edits:
        flags += ["--freeze", edit.module]
    return flags


def stage_groups_below_head(arch: str, image_size: int) -> tuple[tuple[str, ...], ...]:
    """The model's stage groups below its head, input first; built on the meta device (no memory,
    no weights) where the model allows it."""
    import torch

    from engine.model.architectures import build_model

    def info():
        return build_model(arch, 2, "none", image_size).info

    try:
        with torch.device("meta"):
            built = info()
    except (NotImplementedError, RuntimeError):  # a model that copies tensors while it is built (RegNet)
        built = info()
    return tuple(g for g in built.stage_groups if built.head not in g)
