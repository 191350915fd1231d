"""What a run learns: one label per image, several, or a number. One small object per task.

Plans, presets, the freeze proof, the feature cache, resume and early stopping work on the trunk
and never ask which task runs; what differs is here: the head's outputs, the training loss, how a
batch's targets count towards the training score, the validation metrics, the selection score of
the best epoch, and what the checkpoint must carry to turn outputs back into answers (thresholds,
the target's scale). The epoch loop calls these; it holds no per-task branch but one (the
single-label validation pass keeps its confusion matrix and its several-process path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.data.dataset import IMBALANCE_WARNING, DatasetScan
from engine.errors import UserError
from engine.training.class_weights import decide_class_weights, training_criterion
from engine.training.task_metrics import (DEFAULT_THRESHOLD, f1_scores, mean_average_precision, regression_metrics,
                                          tune_thresholds)

LOSSES = ("mse", "huber")


class SingleLabel:
    """Softmax over the classes, cross-entropy (class-weighted when `class_weights` says so)."""

    name = "single-label"
    score_name = "accuracy"

    def __init__(self, scan: DatasetScan, train, device) -> None:
        self.criterion = training_criterion(train.class_weights, scan, train.label_smoothing, device)
        self.note = decide_class_weights(train.class_weights, scan).note

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, y)

    def train_hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == y).sum()

    def train_score(self, hits: int, seen: int) -> float | None:
        return hits / max(1, seen)

    def selection(self, val: dict | None, train_score: float | None, train_loss: float) -> tuple:
        return (val["accuracy"], -val["loss"]) if val else (train_score, -train_loss)

    def checkpoint_fields(self, outputs) -> dict:
        return {}  # a checkpoint without "task" is single-label, as every older one is


class MultiLabel:
    """A sigmoid per label, binary cross-entropy; rare labels weigh more (pos_weight) by the class-weight rule."""

    name = "multi-label"
    score_name = "mAP"

    def __init__(self, scan: DatasetScan, train, device) -> None:
        self.k = len(scan.class_names)
        positives = torch.tensor([c["train"] for c in scan.class_counts()], dtype=torch.float32)
        self.pos_weight, self.note = decide_pos_weight(train.class_weights, positives, len(scan.train), scan.class_names)
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=device)
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=weight)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, y.float())

    def train_hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((logits > 0) == (y > 0.5)).sum()  # label decisions right at 0.5

    def train_score(self, hits: int, seen: int) -> float | None:
        return hits / max(1, seen * self.k)

    def val_loss_sum(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        # Unweighted, each image's mean over its labels: comparable across runs, as single-label's is.
        return float(nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1).sum())

    def val_metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict:
        probs = logits.sigmoid()
        mean_ap, _ = mean_average_precision(probs, y)
        f1 = f1_scores(probs, y, torch.full((self.k,), DEFAULT_THRESHOLD))
        return {"mAP": mean_ap, "macro_f1": f1["macro_f1"], "micro_f1": f1["micro_f1"]}

    def selection(self, val: dict | None, train_score: float | None, train_loss: float) -> tuple:
        if not val:
            return (train_score, -train_loss)
        mean_ap = val["metrics"]["mAP"]
        return (-1.0 if mean_ap is None else mean_ap, -val["loss"])

    def checkpoint_fields(self, outputs) -> dict:
        """Thresholds tuned on the best epoch's validation images (max F1), 0.5 without any."""
        if outputs is None or not len(outputs.labels):
            thresholds = [DEFAULT_THRESHOLD] * self.k
        else:
            thresholds = tune_thresholds(outputs.logits.sigmoid().cpu(), outputs.labels.cpu())
        return {"task": {"name": self.name, "thresholds": thresholds,
                         "thresholds_from": "validation" if outputs is not None and len(outputs.labels) else "default"}}


def decide_pos_weight(mode: str, positives: torch.Tensor, images: int, names) -> tuple[list[float] | None, str]:
    """Per label negatives / positives, for the labels that are rare by class weights' rule: `auto`
    weighs a label whose negatives outnumber its positives IMBALANCE_WARNING times or more,
    `balanced` every label, `none` none (a label without a positive keeps weight 1)."""
    ratio = [(images - p) / p if p else 1.0 for p in positives.tolist()]
    if mode == "none":
        return None, "label weights off (setting)"
    chosen = [r if (mode == "balanced" or r >= IMBALANCE_WARNING) else 1.0 for r in ratio]
    if all(c == 1.0 for c in chosen):
        return None, f"label weights off: no label is rarer than 1 in {IMBALANCE_WARNING + 1:g} images"
    shown = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, chosen) if w != 1.0)
    return chosen, f"rare labels weigh more (BCE pos_weight = negatives / positives): {shown}"


class Regression:
    """One output on the standardised target; MSE or Huber. Metrics on the target's own scale."""

    name = "regression"
    score_name = "R²"

    def __init__(self, scan: DatasetScan, train, device) -> None:
        values = torch.tensor([float(s.label) for s in scan.train], dtype=torch.float64)
        self.mean = float(values.mean()) if len(values) else 0.0
        std = float(values.std(unbiased=False)) if len(values) > 1 else 0.0
        self.scale = std if std > 0 and math.isfinite(std) else 1.0  # constant targets: nothing to scale
        self.loss_name = train.loss
        self.function = nn.functional.mse_loss if train.loss == "mse" else nn.functional.huber_loss
        self.note = (f"regression on the standardised value (mean {self.mean:.6g}, scale {self.scale:.6g}), "
                     f"{train.loss} loss")

    def standardised(self, y: torch.Tensor) -> torch.Tensor:
        return (y.float() - self.mean) / self.scale

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0].double() * self.scale + self.mean

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.function(logits[:, 0], self.standardised(y))

    def train_hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=torch.long, device=logits.device)

    def train_score(self, hits: int, seen: int) -> float | None:
        return None  # no accuracy for a number

    def val_loss_sum(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        return float(self.function(logits[:, 0], self.standardised(y), reduction="sum"))

    def val_metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict:
        return regression_metrics(self.values(logits), y)

    def selection(self, val: dict | None, train_score: float | None, train_loss: float) -> tuple:
        if not val:
            return (-train_loss,)
        metrics = val["metrics"]
        # R² orders epochs as the MSE does on one validation set; -RMSE where R² is undefined.
        return (metrics["r2"] if metrics["r2"] is not None else -metrics["rmse"], -val["loss"])

    def checkpoint_fields(self, outputs) -> dict:
        return {"task": {"name": self.name, "mean": self.mean, "scale": self.scale, "loss": self.loss_name}}


TASK_CLASSES = {cls.name: cls for cls in (SingleLabel, MultiLabel, Regression)}


def make_task(scan: DatasetScan, train, device) -> SingleLabel | MultiLabel | Regression:
    return TASK_CLASSES[scan.task](scan, train, device)


def task_problem(task: str, config, head_is_linear: bool = True) -> str | None:
    """Why `config` cannot train this task (one line); None when it can."""
    if task == "single-label":
        return None
    if config.train.label_smoothing:
        return f"label smoothing is for single-label data; this is {task} data: leave --label-smoothing out"
    if config.train.processes > 1:
        return f"{task} training runs in one process for now; leave --nproc out"
    if not head_is_linear:
        return (f"{config.model.arch}'s head ends in a ReLU, which cannot give {task} outputs (negative values); "
                f"choose another architecture")
    return None


@dataclass(frozen=True)
class CheckpointTask:
    """What a checkpoint says about its task (read back for evaluate, export and predict)."""

    name: str = "single-label"
    thresholds: tuple[float, ...] = ()
    mean: float = 0.0
    scale: float = 1.0

    @classmethod
    def of(cls, checkpoint: dict) -> CheckpointTask:
        raw = checkpoint.get("task") if isinstance(checkpoint, dict) else None
        if not isinstance(raw, dict):
            return cls()
        name = raw.get("name")
        if name not in TASK_CLASSES:
            raise UserError(f"the checkpoint's task {name!r} is not one this Transfer Studio knows")
        try:
            return cls(name, tuple(float(t) for t in raw.get("thresholds", ())), float(raw.get("mean", 0.0)),
                       float(raw.get("scale", 1.0)))
        except (TypeError, ValueError):
            raise UserError("the checkpoint's task fields are damaged") from None

    def to_dict(self) -> dict:
        if self.name == "multi-label":
            return {"name": self.name, "thresholds": list(self.thresholds)}
        if self.name == "regression":
            return {"name": self.name, "mean": self.mean, "scale": self.scale}
        return {"name": self.name}


def refuse_unless_single_label(task: str, what: str) -> None:
    """One line for a view or command that supports single-label data only (issue 25)."""
    if task != "single-label":
        raise UserError(f"{what} supports single-label models only; this one is {task}")
