"""Test-time augmentation: an image's logits averaged with those of its mirror image.

Logits are averaged, not probabilities, so the run's temperature and the unknown score apply to the
result exactly as to one view's logits. Only the horizontal flip: the evaluation crop already is the
centre crop training was validated on, and extra crops of the small images this tool is used on cut
off the object (crops are left out until a measurement shows they help)."""

from __future__ import annotations

from typing import Callable

import torch

VIEWS = ("as is", "mirrored")


def mirrored_logits(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """The logits of the flipped batch (NCHW: the last dimension is the width)."""
    return torch.as_tensor(forward(batch.flip(-1))).float()


def tta_logits(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    return (torch.as_tensor(forward(batch)).float() + mirrored_logits(forward, batch)) / 2
