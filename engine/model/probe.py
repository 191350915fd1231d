"""A linear probe: how well a multinomial logistic regression separates classes by their features.
The advisor measures a backbone with it; the suspects search trains it fold by fold."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from engine.model.devices import one_thread

PROBE_STEPS = 300
PROBE_L2 = 1e-3


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int,
              steps: int = PROBE_STEPS) -> Callable[[torch.Tensor], torch.Tensor]:
    """Standardised features, full-batch Adam, a little L2, zero-initialised (the same data gives
    the same probe, no random draws); returns features -> class probabilities."""
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-6
    xs = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.01)
    with torch.enable_grad(), one_thread():
        for _ in range(steps):
            loss = nn.functional.cross_entropy(xs @ weight + bias, y) + PROBE_L2 * weight.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    weight, bias = weight.detach(), bias.detach()
    return lambda new: torch.softmax(((new - mean) / std) @ weight + bias, dim=1)
