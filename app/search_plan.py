"""What the Search dialog's controller hands between the window's configuration and the engine's search:
the knobs as the dialog shows them, a checked SearchJob for Start, and the best trial as the window's
settings for Use best. Plain functions (no Qt): each refusal is a one-line UserError."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config import PlanConfig, RunConfig
from engine.data.dataset import DatasetScan
from engine.errors import UserError
from engine.model.architectures import ModelInfo
from engine.search.space import SearchSpace, default_space, narrowed, trial_config
from engine.search.worker import SearchJob, trial_settings
from widgets.search_dialog import KnobRow, SearchRequest

MAX_TRIALS = 100_000  # a budget in minutes: the time ends the search, not a count (engine.config search.trials)
# The fields a trial's draw sets besides the plan (engine.search.space.trial_config): what Use best applies.
TRAIN_FIELDS = ("weight_decay", "label_smoothing", "epochs")


def stage_groups(info: ModelInfo | None) -> tuple[tuple[str, ...], ...]:
    """The model's stage groups below its head, input first (as engine.search.space.stage_groups_below_head,
    read from the layer tree the window already built rather than building the model again)."""
    if info is None:
        return ()
    return tuple(group for group in info.stage_groups if info.head not in group)


def _current(name: str, config: RunConfig, depth_groups: int) -> Any:
    plan, train = config.plan, config.train
    return {"strategy": plan.strategy, "unfreeze_depth": max(1, depth_groups), "gradual_every": plan.gradual_every,
            "base_lr": plan.base_lr, "discriminative_factor": plan.discriminative_factor,
            "layer_decay": plan.layer_decay, "weight_decay": train.weight_decay,
            "label_smoothing": train.label_smoothing, "augment": config.data.augment, "epochs": train.epochs}[name]


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def knob_rows(space: SearchSpace, config: RunConfig) -> list[KnobRow]:
    """The space's knobs with their default ranges, and the window's own settings for Fix."""
    rows = []
    for knob in space.knobs:
        if knob.kind == "choice":
            text = ",".join(knob.choices)
        else:
            low, high = (f"{int(v)}" if knob.kind == "int" else f"{v:g}" for v in (knob.low, knob.high))
            text = low if knob.fixed else f"{low}:{high}"
        hint = f"Drawn only for: {', '.join(knob.strategies)}." if knob.strategies else ""
        rows.append(KnobRow(knob.name, text, _text(_current(knob.name, config, space.depth_groups)), knob.log, hint))
    return rows


def default_rows(head_only: bool, config: RunConfig, info: ModelInfo | None) -> list[KnobRow]:
    return knob_rows(default_space(head_only, len(stage_groups(info))), config)


def search_job(request: SearchRequest, config: RunConfig, info: ModelInfo | None, scan: DatasetScan | None,
               runs_root: Path) -> SearchJob:
    """The job Start runs: the window's configuration as every trial's fixed settings, the dialog's space."""
    if scan is None or info is None:
        raise UserError("Open a dataset and wait for its model's layer tree before searching.")
    if not scan.val:
        raise UserError("Trials are compared on validation images and this split gives none: raise Validation.")
    groups = stage_groups(info)
    space = narrowed(default_space(request.head_only, len(groups)), request.specs)
    if request.storage:
        storage = Path(request.storage).expanduser()
        out = storage.parent
    else:  # a new search of its own: a continued one is asked for by naming its journal
        name = f"search-{config.model.arch.replace(':', '-')}-{Path(config.data.root).name or 'data'}"
        out = Path(runs_root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        storage = out / "search.journal"
    base = replace(trial_settings(config), out_dir=str(out.absolute()))
    base.validate()
    trials = request.trials if request.trials is not None else MAX_TRIALS
    timeout = None if request.minutes is None else request.minutes * 60.0
    return SearchJob(base=base, space=space, stage_groups=groups, trials=trials, storage=storage.absolute(),
                     timeout_s=timeout)


def best_settings(job: SearchJob, params: dict[str, Any], config: RunConfig) -> tuple[PlanConfig, dict, dict]:
    """The best trial's draw on the window's configuration: (its plan, the data fields, the training fields)
    to apply as one undoable change. UserError when the window now shows another model or dataset."""
    searched = job.base
    if (config.model.arch, config.data.root) != (searched.model.arch, searched.data.root):
        raise UserError(f"The search was of {searched.model.arch} on {Path(searched.data.root).name}; "
                        f"open them again to use its best trial.")
    trial = trial_config(config, params, job.stage_groups, out_dir="")
    data = {"augment": trial.data.augment}
    train = {name: getattr(trial.train, name) for name in TRAIN_FIELDS}
    return trial.plan, data, train
