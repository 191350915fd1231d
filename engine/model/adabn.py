"""AdaBN: adapt the BatchNorm running statistics to the training images (--adapt-norm on, or auto
where measuring says it helps: engine/training/norm_choice.py).

Pretrained BatchNorm layers normalise with the mean and variance of the data they were trained
on. On a far domain (digits or X-rays against ImageNet photos) those statistics are wrong for
every image, and a frozen trunk keeps them wrong. One pass over the training images in train
mode re-estimates them (Li et al., "Revisiting Batch Normalization for Practical Domain
Adaptation"): no gradient, no weight changes, every other module in eval mode (dropout off).
It runs before trunk features are cached, so the cache and the checkpoint both carry the adapted
statistics, and before the integrity fingerprints are taken, so the adapted values are what
"frozen" then promises. batch_norm_statistics/restore_statistics put the loaded ones back, bit for
bit, when auto keeps them. AdaptedStatistics is what one pass produced, kept in the disk cache beside
the features computed with it: a later run on the same files, weights and batch size takes both from
there, with no trunk pass and no image decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from engine.data.dataset import Preprocessing, normalize_batch


# AdaBN averages over at most this many training images: the statistics have settled long before
# (BatchNorm's own running average weighs about its last 20 batches; at 96 px resnet18's last layer still
# sees 2,304 positions per channel), and a pass over 50,000 images would cost as much as computing their
# features. 512 took 2.8 s of a 19 s run on the digits (722 images at 96 px).
MAX_IMAGES = 256


def evenly_spaced(count: int, at_most: int | None = None) -> list[int]:
    """At most `at_most` (MAX_IMAGES) of range(count), spread evenly: in file order that reaches every class."""
    chosen = min(count, MAX_IMAGES if at_most is None else at_most)
    return [i * count // chosen for i in range(chosen)]


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The norm layers that keep running statistics (GroupNorm and LayerNorm keep none)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


Statistics = dict[nn.Module, list[torch.Tensor]]  # layer -> [running_mean, running_var, num_batches_tracked]


def _buffers(layer: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, ...]:
    return layer.running_mean, layer.running_var, layer.num_batches_tracked


def batch_norm_statistics(model: nn.Module) -> Statistics:
    """A copy of every BatchNorm layer's running statistics, to put back with restore_statistics."""
    return {layer: [b.clone() for b in _buffers(layer)] for layer in batch_norm_layers(model)}


@torch.no_grad()
def restore_statistics(saved: Statistics) -> None:
    """Put the copied statistics back in place (the same tensors: fingerprints and optimizers see them)."""
    for layer, values in saved.items():
        for buffer, value in zip(_buffers(layer), values):
            buffer.copy_(value)


@dataclass(frozen=True)
class AdaptedStatistics:
    """Every BatchNorm layer's buffers after AdaBN, in model order, and the images it averaged over."""

    buffers: list[torch.Tensor]  # running_mean, running_var, num_batches_tracked of each layer in turn
    images: int

    @classmethod
    def of(cls, model: nn.Module, images: int) -> AdaptedStatistics:
        return cls([b.detach().to("cpu", copy=True) for layer in batch_norm_layers(model) for b in _buffers(layer)],
                   images)

    def to_dict(self) -> dict:
        return {"buffers": self.buffers, "images": self.images}

    @classmethod
    def from_dict(cls, stored) -> AdaptedStatistics | None:
        """None for anything that is not what to_dict wrote (a file from before they were kept)."""
        try:
            buffers, images = list(stored["buffers"]), int(stored["images"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(buffers, images) if all(isinstance(b, torch.Tensor) for b in buffers) else None

    @torch.no_grad()
    def apply(self, model: nn.Module) -> bool:
        """Put these statistics in `model`'s layers (the same tensors: fingerprints see them); False,
        and nothing changed, when they are not this model's (another count or shape of layers)."""
        targets = [b for layer in batch_norm_layers(model) for b in _buffers(layer)]
        if len(targets) != len(self.buffers) or any(t.shape != b.shape or t.dtype != b.dtype
                                                    for t, b in zip(targets, self.buffers)):
            return False
        for target, value in zip(targets, self.buffers):
            target.copy_(value)
        return True


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, loader, prep: Preprocessing, device: torch.device, channels_last: bool,
                     progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] = lambda: False) -> int | None:
    """Replace every BatchNorm layer's running mean and variance by their average over `loader`'s
    batches (plain views in file order, at most MAX_IMAGES of them: the same on every run). Returns the number
    of images seen (0: nothing could be adapted, the loaded statistics are kept), or None when
    stopped. Runs in fp32: statistics estimated in bf16 would lose digits."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    loaded = batch_norm_statistics(model)
    seen, finished = 0, False
    try:
        # Set each module's flag directly: model.train() would recurse through the plan's
        # eval-pinned norm layers, and everything but BatchNorm must stay in eval mode.
        for m in modes:
            m.training = m in momenta
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over all batches, not an exponential one
        for i, batch in enumerate(loader, 1):
            if should_stop():
                return None
            if len(batch.labels) > 1:  # batch statistics of one image are no statistics
                x = normalize_batch(batch.images.to(device, non_blocking=True), prep)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)
                seen += len(batch.labels)
            if progress:
                progress(i, len(loader))
        finished = True
    finally:
        if not (finished and seen):  # stopped, failed, or no batch of two: keep what was loaded
            restore_statistics(loaded)
        for m, mode in modes.items():
            m.training = mode
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    return seen
