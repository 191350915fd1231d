"""val_logits.pt: the best epoch's validation logits and labels, kept so that calibration (the
temperature, the unknown threshold) can be fitted, checked and recomputed later. val_predictions.csv
keeps only the top 3 probabilities, which is not enough to refit a temperature.

A plain dict that torch.load(weights_only=True) reads: {"format_version", "epoch", "class_names",
"paths" (relative to the dataset root; empty when the order was not known), "labels" (N,) int64,
"logits" (N, K) float32}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from engine.errors import UserError
from engine.model.checkpoint import atomic_torch_save, safe_torch_load

VAL_LOGITS_VERSION = 1


@dataclass(frozen=True)
class ValidationLogits:
    epoch: int
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: torch.Tensor
    logits: torch.Tensor


def write_val_logits(path: Path, epoch: int, class_names: Sequence[str], paths: Sequence[str],
                     labels: torch.Tensor, logits: torch.Tensor) -> None:
    atomic_torch_save({"format_version": VAL_LOGITS_VERSION, "epoch": int(epoch), "class_names": list(class_names),
                       "paths": list(paths), "labels": labels.detach().long().cpu(),
                       "logits": logits.detach().float().cpu()}, path)


def read_val_logits(path: Path) -> ValidationLogits:
    """One-line UserError for a missing, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found (a run from before validation logits were kept, or one without "
                        f"validation images)")
    state = safe_torch_load(path)
    try:
        version = state["format_version"]
        if not isinstance(version, int) or version > VAL_LOGITS_VERSION:
            raise UserError(f"{path} was written by a newer Transfer Studio (format {version!r})")
        labels, logits = state["labels"], state["logits"]
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError
        return ValidationLogits(int(state["epoch"]), tuple(state["class_names"]), tuple(state["paths"]),
                                labels.long(), logits.float())
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path} is not a validation logits file") from None


VAL_OUTPUTS_VERSION = 1


@dataclass(frozen=True)
class ValidationOutputsFile:
    """val_outputs.pt: a multi-label or regression run's best validation pass. `outputs` are the
    raw head outputs (logits; regression: the standardised value), `targets` (N, K) multi-hot or
    (N,) values, `extra` reserved (written empty: the thresholds and the target's scale are the
    checkpoint's, which evaluate reads beside it)."""

    epoch: int
    task: str
    names: tuple[str, ...]
    paths: tuple[str, ...]
    targets: torch.Tensor
    outputs: torch.Tensor
    extra: dict


def write_val_outputs(path: Path, epoch: int, task: str, names: Sequence[str], paths: Sequence[str],
                      targets: torch.Tensor, outputs: torch.Tensor, extra: dict) -> None:
    atomic_torch_save({"format_version": VAL_OUTPUTS_VERSION, "epoch": int(epoch), "task": task,
                       "names": list(names), "paths": list(paths), "targets": targets.detach().float().cpu(),
                       "outputs": outputs.detach().float().cpu(), "extra": extra}, path)


def read_val_outputs(path: Path) -> ValidationOutputsFile:
    """One-line UserError for a missing, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found (a run without validation images, or stopped before its first epoch ended)")
    state = safe_torch_load(path)
    try:
        version = state["format_version"]
        if not isinstance(version, int) or version > VAL_OUTPUTS_VERSION:
            raise UserError(f"{path} was written by a newer Transfer Studio (format {version!r})")
        targets, outputs = state["targets"].float(), state["outputs"].float()
        if outputs.ndim != 2 or targets.shape[0] != outputs.shape[0]:
            raise ValueError
        return ValidationOutputsFile(int(state["epoch"]), str(state["task"]), tuple(state["names"]),
                                     tuple(state["paths"]), targets, outputs, dict(state["extra"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path} is not a validation outputs file") from None
