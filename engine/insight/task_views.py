"""What Insight shows of a multi-label or regression run, computed from its TaskEvaluation.

Multi-label: per label, the 2x2 grid the confusion matrix becomes (the label on the image or not,
predicted at its threshold or not) and the images of each of its cells, highest loss first (the
label's binary cross-entropy on that image). Regression: each image as a (true, predicted) point,
and the images by the size of their residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.insight.task_evaluation import TaskEvaluation

# The 2x2 grid's cells, in reading order: on the image and found, on it and missed, not on it but
# predicted, neither. The first letter of each says whether the model was right.
CELLS = ("tp", "fn", "fp", "tn")
CELL_NAMES = {"tp": "true positives", "fn": "false negatives", "fp": "false positives", "tn": "true negatives"}


@dataclass(frozen=True)
class LabelImage:
    """One image's answer for one label."""

    path: str  # relative to the data root
    label: str
    present: bool  # the label is on the image
    predicted: bool  # its probability reached the threshold
    probability: float
    threshold: float
    loss: float  # the label's binary cross-entropy on this image


@dataclass(frozen=True)
class ValueImage:
    """One image's predicted and true value."""

    path: str  # relative to the data root
    actual: float
    predicted: float

    @property
    def residual(self) -> float:
        return self.predicted - self.actual

    @property
    def loss(self) -> float:
        """The error's size: what a gallery orders by, largest first."""
        return abs(self.residual)


def _decisions(evaluation: TaskEvaluation) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(predicted, present) as (N, K) booleans, and the thresholds the figures used."""
    outputs = _outputs(evaluation, "multi-label")
    thresholds = [evaluation.figures["per_label"][name]["threshold"] for name in evaluation.names]
    predicted = outputs.predicted >= torch.tensor(thresholds, dtype=outputs.predicted.dtype).view(1, -1)
    return predicted, outputs.targets > 0.5, thresholds


def _outputs(evaluation: TaskEvaluation, task: str):
    if evaluation.task != task or evaluation.outputs is None:
        raise ValueError(f"not a {task} evaluation with its images' outputs")
    return evaluation.outputs


def label_grid(evaluation: TaskEvaluation) -> dict[str, dict[str, int]]:
    """Per label, the count of each of CELLS; the four add up to the images evaluated."""
    predicted, present, _ = _decisions(evaluation)
    masks = {"tp": predicted & present, "fn": ~predicted & present, "fp": predicted & ~present,
             "tn": ~predicted & ~present}
    counts = {cell: mask.sum(0).tolist() for cell, mask in masks.items()}
    return {name: {cell: int(counts[cell][k]) for cell in CELLS} for k, name in enumerate(evaluation.names)}


def label_cell_images(evaluation: TaskEvaluation, label: str, cell: str) -> list[LabelImage]:
    """The images of one label's cell, highest loss first (images without a recorded path left out)."""
    k = evaluation.names.index(label)
    predicted, present, thresholds = _decisions(evaluation)
    outputs = evaluation.outputs
    wanted_present, wanted_predicted = cell in ("tp", "fn"), cell in ("tp", "fp")
    chosen = ((present[:, k] == wanted_present) & (predicted[:, k] == wanted_predicted)).nonzero().flatten().tolist()
    probabilities, losses = outputs.predicted[:, k].tolist(), outputs.losses[:, k].tolist()
    images = [LabelImage(outputs.paths[i], label, wanted_present, wanted_predicted, probabilities[i], thresholds[k],
                         losses[i]) for i in chosen if outputs.paths[i]]
    return sorted(images, key=lambda image: -image.loss)


def worst_label_cell(grid: dict[str, dict[str, int]]) -> tuple[str, str] | None:
    """Where to open: the label and error cell (fn or fp) with the most images; the first label's
    true positives when nothing is wrong; None without labels."""
    errors = [(counts[cell], -i, label, cell) for i, (label, counts) in enumerate(grid.items()) for cell in ("fn", "fp")]
    if not errors:
        return None
    count, _, label, cell = max(errors)
    return (label, cell) if count else (next(iter(grid)), "tp")


def value_images(evaluation: TaskEvaluation) -> list[ValueImage]:
    """Every image's (true, predicted) value, in the evaluation's order (paths "" where not recorded)."""
    outputs = _outputs(evaluation, "regression")
    return [ValueImage(path, actual, predicted) for path, actual, predicted
            in zip(outputs.paths, outputs.targets.tolist(), outputs.predicted.tolist())]


def largest_residuals(images: list[ValueImage], limit: int | None = None) -> list[ValueImage]:
    """The images by |residual|, largest first (at most `limit`); those without a path left out."""
    ranked = sorted((image for image in images if image.path), key=lambda image: -image.loss)
    return ranked if limit is None else ranked[:limit]
