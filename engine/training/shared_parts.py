"""What runs that start alike compute alike: built once, handed to each (a search's trials).

A search trains dozens of runs of one model on one dataset that differ in their recipe. Each is an
ordinary run (engine.training.trainer.fit), and set_up asks its parts of the run from here:
- FreshParts, what a lone run uses: the model built and its weights loaded, the features' cache key
  computed from the files, the cached features read from the disk cache, no reference for the freeze proof;
- SharedParts, what a search gives each of its trials: the first run that asks builds the model or
  reads the features, the next ones in this process get a copy of the model (with the random state
  its build left, so the run goes on exactly as if it had built it) and the same feature tensors, and
  the built model doubles as the frozen tensors' reference (engine.training.integrity.FrozenReference).
  It also scans the dataset once (`scan`, which the search hands to fit) and computes each features'
  cache key once: a search reads its dataset's files when it starts, and its trials share one split.
"""

from __future__ import annotations

import copy
import random
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from engine.config import RunConfig
from engine.data.dataset import DatasetScan, Sample, scan_dataset
from engine.model.architectures import BuiltModel, build_model
from engine.model.features import CachedFeatures, feature_cache_key, load_cached_features
from engine.training.integrity import FrozenReference


class FreshParts:
    """Everything built anew, for one run."""

    def build_model(self, arch: str, num_classes: int, weights: str, image_size: int, min_classes: int,
                    channels_last: bool) -> BuiltModel:
        """The model with its weights loaded, in channels_last memory format when asked."""
        built = build_model(arch, num_classes, weights, image_size, min_classes=min_classes)
        if channels_last:
            built.model.to(memory_format=torch.channels_last)
        return built

    def feature_key(self, samples: Sequence[Sample], **identity) -> str:
        return feature_cache_key(samples, **identity)

    def cached_features(self, key: str) -> CachedFeatures | None:
        return load_cached_features(key)

    def frozen_reference(self, model: nn.Module) -> FrozenReference | None:
        return None


FRESH = FreshParts()


@dataclass(frozen=True)
class _RandomState:
    torch_state: torch.Tensor
    python_state: tuple
    numpy_state: tuple

    @classmethod
    def now(cls) -> _RandomState:
        return cls(torch.get_rng_state(), random.getstate(), np.random.get_state())

    def same(self, other: _RandomState) -> bool:
        return (torch.equal(self.torch_state, other.torch_state) and self.python_state == other.python_state
                and all(_equal(a, b) for a, b in zip(self.numpy_state, other.numpy_state)))

    def restore(self) -> None:
        torch.set_rng_state(self.torch_state)
        random.setstate(self.python_state)
        np.random.set_state(self.numpy_state)


def _equal(a, b) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else a == b


@dataclass(frozen=True)
class _Built:
    built: BuiltModel  # never trained: copies of its model are handed out
    before: _RandomState  # the random state the build started from ...
    after: _RandomState  # ... and the one it left
    reference: FrozenReference


class SharedParts(FreshParts):
    """Built once and reused by runs that follow one another in one process (a search worker's trials:
    a model handed out is taken back when the next run asks for one, its memory refilled). A build is
    reused only for a run whose random state before the build is the one the kept build started from
    (same seed, same draws before), and a weights file only while its size and time are unchanged."""

    def __init__(self) -> None:
        self._builds: dict[tuple, _Built] = {}
        self._features: dict[str, CachedFeatures] = {}
        self._origins: weakref.WeakKeyDictionary[nn.Module, _Built] = weakref.WeakKeyDictionary()
        self._lent: dict[tuple, nn.Module] = {}  # the last copy handed out, per build: its run has ended by the next
        self._scans: dict[tuple, DatasetScan] = {}
        self._keys: dict[tuple, str] = {}

    def scan(self, config: RunConfig) -> DatasetScan:
        """The dataset's scan as set_up would make it, made once."""
        data = config.data
        key = (data.root, data.val_fraction, config.train.seed, data.task)
        if key not in self._scans:
            self._scans[key] = scan_dataset(data.root, data.val_fraction, config.train.seed, task=data.task)
        return self._scans[key]

    def build_model(self, arch: str, num_classes: int, weights: str, image_size: int, min_classes: int,
                    channels_last: bool) -> BuiltModel:
        key = (arch, num_classes, weights, _file_identity(weights), image_size, min_classes, channels_last)
        before = _RandomState.now()
        kept = self._builds.get(key)
        if kept is None or not kept.before.same(before):
            built = super().build_model(arch, num_classes, weights, image_size, min_classes, channels_last)
            kept = self._builds[key] = _Built(built, before, _RandomState.now(), FrozenReference(built.model))
        else:
            kept.after.restore()
        model = self._lent[key] = _copy(kept.built.model, self._lent.pop(key, None))
        self._origins[model] = kept
        return replace(kept.built, model=model, notes=list(kept.built.notes))

    def feature_key(self, samples: Sequence[Sample], **identity) -> str:
        """Computed once per set of files and settings: a search reads its dataset's files once."""
        key = (tuple(samples), tuple(sorted(identity.items())))
        if key not in self._keys:
            self._keys[key] = super().feature_key(samples, **identity)
        return self._keys[key]

    def cached_features(self, key: str) -> CachedFeatures | None:
        """Read from the disk cache once; runs only read feature tensors, so they share them."""
        if key not in self._features:
            found = super().cached_features(key)
            if found is None:
                return None
            self._features[key] = found
        return self._features[key]

    def frozen_reference(self, model: nn.Module) -> FrozenReference | None:
        """The reference of the build `model` was copied from (None for a model built elsewhere)."""
        kept = self._origins.get(model)
        return kept.reference if kept is not None else None


def _copy(template: nn.Module, ended: nn.Module | None) -> nn.Module:
    """copy.deepcopy(template), written into the tensors of `ended` (an ended run's copy of it) where
    they have the same layout: allocating a large model's memory anew costs several times more than
    copying into memory already there."""
    memo: dict[int, torch.Tensor] = {}
    if ended is not None:
        old = {**dict(ended.named_parameters()), **dict(ended.named_buffers())}
        with torch.no_grad():
            for name, tensor in [*template.named_parameters(), *template.named_buffers()]:
                target = old.get(name)
                if target is None or not _same_layout(target, tensor):
                    continue
                target = target.detach().copy_(tensor)
                # What deepcopy would make: a new parameter (no grad, the template's requires_grad) or buffer.
                memo[id(tensor)] = type(tensor)(target, tensor.requires_grad) if isinstance(tensor, nn.Parameter) \
                    else target
    return copy.deepcopy(template, memo)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and a.stride() == b.stride()


def _file_identity(weights: str) -> tuple | None:
    try:
        stat = Path(weights).stat()
    except (OSError, ValueError):
        return None  # "imagenet", "none" or a missing file (build_model says why)
    return stat.st_size, stat.st_mtime_ns
