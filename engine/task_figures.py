"""Each task's validation figures by name, and the one that heads a run (its "best val" figure).

A single-label run is judged by accuracy, a multi-label one by mAP, a regression by R². The figures'
names are metrics.jsonl's `val_<name>` keys and EpochEvent.val_metrics' keys (engine.training.tasks
computes them); the runs list, the training panel and the plots all read them from here, so a new
figure is named once.
"""

from __future__ import annotations

import math

TASK_METRICS = {"single-label": (), "multi-label": ("mAP", "macro_f1", "micro_f1"), "regression": ("mae", "rmse", "r2")}
HEADLINE = {"single-label": "accuracy", "multi-label": "mAP", "regression": "r2"}
SHOWN_NAMES = {"accuracy": "accuracy", "mAP": "mAP", "macro_f1": "macro F1", "micro_f1": "micro F1", "mae": "MAE",
               "rmse": "RMSE", "r2": "R²"}


def headline(task: str, val_accuracy: float | None, metrics: dict | None) -> tuple[str, float | None]:
    """(figure name, value) that heads a run or an epoch: accuracy, mAP or R² (None: not measured)."""
    name = HEADLINE.get(task, "accuracy")
    value = val_accuracy if name == "accuracy" else (metrics or {}).get(name)
    return name, value if isinstance(value, (int, float)) and math.isfinite(value) else None


def format_figure(name: str, value: float | None) -> str:
    """"81.2%" for an accuracy, "mAP 0.812" or "R² 0.71" for the others, "—" when unmeasured."""
    if value is None:
        return "—"
    if name == "accuracy":
        return f"{value:.1%}"
    return f"{SHOWN_NAMES.get(name, name)} {value:.3g}"
