"""Cached trunk features: when everything before the head is frozen, the trunk's output for an
image never changes (frozen norm layers are in eval mode, no augmentation), so compute it once
and train the head on the cached vectors: an epoch then costs milliseconds instead of a full
forward pass over every image.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .data import Preprocessing, normalize_batch
from .models import ModelInfo
from .plan import Plan


def feature_cache_decision(info: ModelInfo, plan: Plan, augment: str, enabled: bool) -> tuple[bool, str]:
    """Whether the head can train on cached features, and why (shown to the person)."""
    if not enabled:
        return False, "feature cache off (setting)"
    if plan.unfreeze_at:
        return False, "feature cache off: gradual unfreezing changes the trunk"
    head_prefix = info.head + "."
    for param_name, module, _ in info.parameter_modules:
        if not param_name.startswith(head_prefix) and not plan.effective(module).frozen:
            return False, "feature cache off: layers before the head train"
    for layer in info.layers:
        if layer.is_norm and not layer.name.startswith(head_prefix):
            eff = plan.effective(layer.name)
            if eff.train_norm:
                return False, "feature cache off: frozen norm layers update their statistics"
    if augment != "none":
        return False, f"feature cache off: augmentation '{augment}' changes every epoch's inputs (choose 'none' to cache)"
    return True, "feature cache on: trunk computed once, head trained on cached features"


@contextmanager
def head_removed(model: nn.Module, head: str):
    """Temporarily replace the head by Identity so the model returns the head's input."""
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    try:
        yield model
    finally:
        setattr(parent, child, original)


@torch.no_grad()
def compute_features(model: nn.Module, head: str, loader, prep: Preprocessing, device: torch.device,
                     autocast: Callable, channels_last: bool,
                     progress: Callable[[int, int], None] | None = None,
                     on_failures: Callable[[list], None] | None = None,
                     should_stop: Callable[[], bool] = lambda: False):
    """(features float32 (N, D), labels (N,)) for every decodable image of the loader."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        with head_removed(model, head):
            for i, batch in enumerate(loader, 1):
                if should_stop():
                    return None
                if batch.failures and on_failures:
                    on_failures(batch.failures)
                if len(batch.labels):
                    x = normalize_batch(batch.images.to(device, non_blocking=True), prep)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast():
                        out = model(x)
                    feats.append(out.float().flatten(1).cpu())
                    labels.append(batch.labels)
                if progress:
                    progress(i, len(loader))
    finally:
        model.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
