"""Class-weighted loss for imbalanced datasets: when, with which weights, and the note that says so.

`auto` weights the loss only when the largest class has at least IMBALANCE_THRESHOLD times the
images of the smallest (the same 3x the dataset scan warns about); `balanced` always; `none` never.
Weights are sklearn's "balanced" rule n / (K * n_c) over the training split, so a class seen
twice as often counts half as much per image and every class weighs the same in total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from engine.config import CLASS_WEIGHTS
from engine.data.dataset import IMBALANCE_WARNING as IMBALANCE_THRESHOLD, DatasetScan


@dataclass(frozen=True)
class ClassWeighting:
    weights: tuple[float, ...] | None  # one per class, or None for a plain cross-entropy
    imbalance: float  # largest / smallest class over the whole dataset
    note: str  # what was decided and why, for the run's notes

    @property
    def on(self) -> bool:
        return self.weights is not None


def balanced_weights(train_counts: Sequence[int]) -> tuple[float, ...]:
    """n / (K * n_c); a class absent from the training split gets weight 0 (it has no loss terms)."""
    n, k = sum(train_counts), len(train_counts)
    return tuple(n / (k * c) if c else 0.0 for c in train_counts)


def decide_class_weights(mode: str, scan: DatasetScan) -> ClassWeighting:
    ratio = scan.imbalance()
    ratio_text = f"largest class {ratio:.1f}x the smallest"
    if mode == "none":
        return ClassWeighting(None, ratio, f"class weights off (setting); {ratio_text}")
    if mode == "auto" and ratio < IMBALANCE_THRESHOLD:
        return ClassWeighting(None, ratio, f"class weights off: {ratio_text}, under the "
                                           f"{IMBALANCE_THRESHOLD:g}x that switches them on")
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class-weight mode {mode!r}")
    weights = balanced_weights([c["train"] for c in scan.class_counts()])
    why = "setting 'balanced'" if mode == "balanced" else f"{ratio_text}, at least {IMBALANCE_THRESHOLD:g}x"
    shown = ", ".join(f"{name} {w:.2f}" for name, w in zip(scan.class_names, weights))
    return ClassWeighting(weights, ratio, f"class-weighted loss ({why}): {shown}")


def training_criterion(mode: str, scan: DatasetScan, label_smoothing: float,
                       device: torch.device | str = "cpu") -> nn.CrossEntropyLoss:
    """The training loss the epoch loop uses (validation loss stays unweighted, comparable across runs)."""
    weighting = decide_class_weights(mode, scan)
    weight = None if weighting.weights is None else torch.tensor(weighting.weights, dtype=torch.float32,
                                                                   device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
