"""What the live plots' second plot shows for each task: single-label's accuracy (train and
validation), multi-label's validation mAP and macro F1, regression's validation R². No Qt: the plot
(widgets/plots.py) asks this module for its title, axis, legends and an epoch's points.

Multi-label's training figure (label decisions right at 0.5) and regression's MAE and RMSE stay in
metrics.jsonl and TensorBoard: beside mAP, or on R²'s axis, they would read as the same kind of score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.events import EpochEvent

CURVES = ("train_acc", "val_acc", "val_second")  # the plot's three curves, made once


@dataclass(frozen=True)
class ScoreAxis:
    title: str
    y_label: str
    y_range: tuple[float, float] | None  # None: follow the data (R² falls far below 0 for a poor model)
    legends: tuple[str | None, str | None, str | None]  # per curve of CURVES; None: not drawn for this task
    tip: str


SCORE_AXES = {
    "single-label": ScoreAxis("Accuracy", "top-1", (0.0, 1.0), ("train", "validation", None),
                              "Top-1 accuracy per epoch, on the training and the validation images."),
    "multi-label": ScoreAxis("mAP and macro F1 (validation)", "score", (0.0, 1.0),
                             (None, "val mAP", "val macro F1"),
                             "Mean average precision over the labels, and the mean F1 at 0.5, on the validation "
                             "images (micro F1 is in metrics.jsonl and TensorBoard)."),
    "regression": ScoreAxis("R² (validation)", "R²", None, (None, "val R²", None),
                            "The share of the value's variance the model explains on the validation images "
                            "(1 is perfect, 0 is the mean's guess); MAE and RMSE are in metrics.jsonl and TensorBoard."),
}


def score_axis(task: str) -> ScoreAxis:
    return SCORE_AXES.get(task, SCORE_AXES["single-label"])


def score_points(event: EpochEvent) -> dict[str, float]:
    """The epoch's point on each curve its task draws (curves without a finite value left out)."""
    if event.task == "multi-label":
        values = {"val_acc": event.val_metrics.get("mAP"), "val_second": event.val_metrics.get("macro_f1")}
    elif event.task == "regression":
        values = {"val_acc": event.val_metrics.get("r2")}
    else:
        values = {"train_acc": event.train_accuracy, "val_acc": event.val_accuracy}
    return {name: float(v) for name, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
