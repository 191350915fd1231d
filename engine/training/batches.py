"""Where an epoch's batches come from: decoded images, or the trunk's cached features.

Both sources give (inputs on the device, labels on the device) and say which module the loop
calls on them: the whole model for images, only the head for features.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from engine.config import RunConfig
from engine.data.dataset import (Preprocessing, batches_per_epoch, epoch_order, normalize_batch,
                                 worker_deaths_reported)
from engine.model.architectures import check_arch, check_image_size, describe, plain_model
from engine.plan.plan import build_plan
from engine.distributed.sharding import rank_batches, validation_share

Batch = tuple[torch.Tensor, torch.Tensor]


class SkippedLog:
    """Files that could not be used, with the reason, gathered from every stage of a run."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        self.reasons.setdefault(path, reason)

    def add_failures(self, failures, samples) -> None:
        for index, reason in failures:
            self.add(samples[index].path, reason)

    def summary(self) -> str:
        """How many files failed and the first reason, in one line."""
        if not self.reasons:
            return "no file failed to read, but none was left to train on"
        path, reason = next(iter(self.reasons.items()))
        count = len(self.reasons)
        return f"{count} file{'s' if count != 1 else ''} could not be read (first: {path}: {reason})"


class ImageBatches:
    """Batches of images from DataLoaders (decoded-image cache behind them)."""

    def __init__(self, train_loader, val_loader, train_samples, val_samples, prep: Preprocessing,
                 device: torch.device, channels_last: bool, skipped: SkippedLog, last_epoch: int | None = None,
                 global_steps: int | None = None) -> None:
        self.train_loader, self.val_loader = train_loader, val_loader
        # One rank of several: the global batches of an epoch, which a rank's share may fall short of by one.
        self.global_steps = global_steps
        self.last_epoch = last_epoch
        self.train_samples, self.val_samples = train_samples, val_samples
        self.prep, self.device, self.channels_last, self.skipped = prep, device, channels_last, skipped
        # On a GPU the workers assemble the next epoch's first batches while validation runs, so
        # the GPU does not wait for them at every epoch start (on CPU they would compete for cores).
        self.prefetch_next_epoch = device.type == "cuda" and train_loader.num_workers > 0
        self._next_epoch: tuple[int, Iterator] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.global_steps or max(1, len(self.train_loader))

    @property
    def train_count(self) -> int:
        """Training images an epoch's order is made of (of all ranks)."""
        return len(self.train_samples)

    def module_to_train(self, model: nn.Module, head: str) -> nn.Module:
        return model

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        started = self._next_epoch
        self._next_epoch = None
        batches = started[1] if started is not None and started[0] == epoch else self._start(epoch)
        yield from _without_batches_of_one(self._batches(batches, self.train_samples), self.train_loader.batch_size)
        if self.prefetch_next_epoch and (self.last_epoch is None or epoch < self.last_epoch):
            # (never past the last epoch: workers left holding batches took ~80 s to shut down on CUDA)
            self._next_epoch = (epoch + 1, self._start(epoch + 1))

    def _start(self, epoch: int) -> Iterator:
        self.train_loader.sampler.set_epoch(epoch)
        return iter(self.train_loader)

    def val_batches(self) -> Iterator[Batch]:
        if self.val_loader is not None:
            yield from self._batches(self.val_loader, self.val_samples)

    def _batches(self, loader, samples) -> Iterator[Batch]:
        # The loader reports a worker's death (engine.data.dataset.WorkerLoader); torch's SIGCHLD
        # handler may also raise it in this code, between two batches.
        with worker_deaths_reported():
            for batch in loader:
                if batch.failures:
                    self.skipped.add_failures(batch.failures, samples)
                if len(batch.labels):
                    yield self._to_device(batch.images), batch.labels.to(self.device, non_blocking=True)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(images.to(self.device, non_blocking=True), self.prep)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _without_batches_of_one(batches: Iterator[Batch], batch_size: int) -> Iterator[Batch]:
    """A batch that files failing mid-epoch shrank to one image joins the next batch: BatchNorm in
    train mode cannot normalise one image by its own statistics. A last one is left out of the epoch
    (as a last batch of one always is, see drops_last_batch). Batch size 1 is refused up front
    where BatchNorm trains (single_image_batch_problem), so there every batch is one, as asked."""
    held: Batch | None = None
    for x, y in batches:
        if held is not None:
            x, y, held = torch.cat([held[0], x]), torch.cat([held[1], y]), None
        if len(y) == 1 and batch_size > 1:
            held = (x, y)
            continue
        yield x, y


def single_image_batch_problem(config: RunConfig) -> str | None:
    """Why a batch size of 1 cannot train as `config` says: a BatchNorm layer trains in some epoch
    (a frozen one is pinned to eval mode and takes any batch). Asked before a run holds anything,
    on a model built on the meta device where it can be: no memory, no weights, milliseconds."""
    if config.train.batch_size > 1:
        return None
    arch, size = config.model.arch, config.data.image_size
    check_arch(arch)  # a model that cannot be built is named as such, not by the builder's traceback
    check_image_size(arch, size)
    try:
        with torch.device("meta"):
            model = plain_model(arch, 2, size)
    except (NotImplementedError, RuntimeError):  # RegNet computes its widths with tensors: built for real
        model = plain_model(arch, 2, size)
    plan = build_plan(config.plan, describe(model, arch, 2, size))
    norms = [name for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    epochs = {0, *(e for e in plan.unfreeze_at.values() if e < config.train.epochs)}  # where the plan changes
    for epoch in sorted(epochs):
        plan_now = plan.at_epoch(epoch)
        for name in norms:
            eff = plan_now.effective(name)
            if not eff.frozen or eff.train_norm:
                return (f"a batch size of 1 cannot train {arch}: BatchNorm layer {name} trains and needs 2 or more "
                        f"images per batch; use a batch size of 2 or more, or freeze the layers that hold "
                        f"BatchNorm (e.g. strategy feature-extraction)")
    return None


class FeatureBatches:
    """Batches of cached trunk features: the head alone trains, an epoch costs milliseconds."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None,
                 batch_size: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.train, self.val = train, val
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world_size = rank, world_size  # this process's share (engine.distributed.sharding)

    @property
    def steps_per_epoch(self) -> int:
        return batches_per_epoch(len(self.train[1]), self.batch_size)

    @property
    def train_count(self) -> int:
        return len(self.train[1])

    def module_to_train(self, model: nn.Module, head: str) -> nn.Module:
        return model.get_submodule(head)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        labels = self.train[1]
        order = epoch_order(len(labels), self.seed, epoch)
        rows = self._epoch_rows(epoch)
        for idx in rank_batches(order, self.batch_size, self.rank, self.world_size):
            yield rows(idx).to(self.device), labels[idx].to(self.device)

    def _epoch_rows(self, epoch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """How an epoch gathers the features of a batch's images (AugmentedFeatureBatches picks views)."""
        feats = self.train[0]
        return lambda idx: feats[idx]

    def val_batches(self) -> Iterator[Batch]:
        if self.val is None:
            return
        feats, labels = self.val
        share = torch.arange(len(labels))[validation_share(len(labels), self.rank, self.world_size)]
        bs = self.batch_size * 4
        for start in range(0, len(share), bs):
            idx = share[start:start + bs]
            yield feats[idx].to(self.device), labels[idx].to(self.device)


def view_choice(count: int, n: int, seed: int, epoch: int) -> torch.Tensor:
    """(N,): which of the `count` cached views each image uses this epoch, a function of (seed,
    epoch) alone, so a resumed run draws what the uninterrupted one would have."""
    # A different stream from epoch_order's (seed * 100_003 + epoch), so order and views are independent.
    generator = torch.Generator().manual_seed(seed * 100_019 + epoch + 1_000_003)
    return torch.randint(count, (n,), generator=generator)


def draw_views(views: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """(N, D): the epoch's view of every image (view_choice), gathered at once."""
    n = views.shape[1]
    return views[view_choice(views.shape[0], n, seed, epoch), torch.arange(n)]


class AugmentedFeatureBatches(FeatureBatches):
    """Cached features of V augmented views per training image; each epoch trains the head on
    one view per image (drawn by draw_views) and validates on the plain view's features."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, val, batch_size: int, seed: int,
                 device: torch.device) -> None:
        super().__init__((views[0], labels), val, batch_size, seed, device)
        self.views = views

    def _epoch_rows(self, epoch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        # Gathered batch by batch: no copy of all N x D features per epoch.
        pick = view_choice(self.views.shape[0], self.views.shape[1], self.seed, epoch)
        return lambda idx: self.views[pick[idx], idx]
