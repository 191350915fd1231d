"""An epoch's figures and a run's configuration by name, as TensorBoard and MLflow show them: one
naming for both.

`loss/train`, `loss/val`, `accuracy/train`, `accuracy/val`, `balanced_accuracy/val`, `lr/<group>`,
and, where telemetry sampled them, `update_ratio/<module>` and `grad_norm/<module>`. A multi-label
run adds `mAP/val`, `macro_f1/val` and `micro_f1/val` (its `accuracy/train` counts label decisions at
0.5), a regression run `mae/val`, `rmse/val` and `r2/val` (it has no accuracy). The values are
metrics.jsonl's own (the same EpochEvent), so either tool agrees with the run folder.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from engine.events import EpochEvent

_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.\-/]+")


def scalar_name(text: str) -> str:
    """A group label or module name as both tools accept it: "base, fc" -> "base_fc",
    "layer4 (from epoch 3)" -> "layer4_from_epoch_3"."""
    return _NOT_IN_A_NAME.sub("_", text).strip("_") or "_"


def epoch_scalars(event: EpochEvent) -> dict[str, float]:
    """Name -> value of the epoch's figures; a figure the epoch has not (no validation images,
    telemetry off) or that is not finite is left out rather than drawn as a gap or a spike."""
    values: dict[str, float | None] = {
        "loss/train": event.train_loss, "accuracy/train": event.train_accuracy,
        "loss/val": event.val_loss, "accuracy/val": event.val_accuracy,
        "balanced_accuracy/val": event.val_balanced_accuracy,
    }
    # The task's validation figures (metrics.jsonl's val_<name>): mAP and F1s, or MAE, RMSE, R².
    values.update({f"{scalar_name(name)}/val": value for name, value in event.val_metrics.items()})
    values.update({f"lr/{scalar_name(group)}": lr for group, lr in event.lr.items()})
    for module, stats in event.layers.items():
        values[f"update_ratio/{scalar_name(module)}"] = stats.update_ratio
        values[f"grad_norm/{scalar_name(module)}"] = stats.grad_norm
    return {name: float(v) for name, v in values.items() if v is not None and math.isfinite(v)}


def config_values(config: dict, prefix: str = "") -> dict[str, str | float | int | bool]:
    """The run's configuration flat ("train.epochs": 10), for hparams and parameters; lists (the
    plan's edits) as JSON text, unset values (None) left out."""
    values: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            values.update(config_values(value, name + "."))
        elif isinstance(value, (list, tuple)):
            values[name] = json.dumps(value)
        elif value is not None:
            values[name] = value
    return values
