"""Each rank's share of an epoch: no sample twice, none padded in.

The epoch's order is the one a single process uses (engine.data.dataset.epoch_order: seed and epoch
alone), cut into the same global batches; rank r takes positions r, r+W, ... of each global
batch. So a step of W processes trains on exactly the images one process's step would, the
number of steps (and the LR schedule, and resume.pt's step count) does not depend on W, and a
run can continue with another number of processes. DistributedSampler pads the last batches by
repeating samples instead, which would count some validation images twice.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from engine.data.dataset import ImageDataset, drops_last_batch, epoch_order, worker_loader
from engine.errors import UserError


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """--batch-size is the global batch: each rank takes an equal part of it."""
    if batch_size % world_size:
        raise UserError(f"a batch size of {batch_size} cannot be split evenly between {world_size} processes; "
                        f"use a multiple of {world_size}")
    return batch_size // world_size


def rank_batches(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> list[torch.Tensor]:
    """This rank's part of each global batch of `order` (a last global batch of one is left out,
    as one process leaves it out: see drops_last_batch). Empty parts are left out."""
    end = len(order) - 1 if drops_last_batch(len(order), batch_size) else len(order)
    share = batch_size // world_size
    parts = (_part(order[start:min(start + batch_size, end)], rank, world_size, share)
             for start in range(0, end, batch_size))
    return [part for part in parts if len(part)]


def global_batch_size(n: int, batch_size: int, step: int) -> int:
    """Images in global batch `step` (1-based) of an epoch of `n` (as rank_batches cuts it)."""
    end = n - 1 if drops_last_batch(n, batch_size) else n
    return max(1, min(batch_size, end - (step - 1) * batch_size))


def _part(batch: torch.Tensor, rank: int, world_size: int, share: int) -> torch.Tensor:
    """Positions rank, rank+W, ... of `batch`. A short last batch that would leave some rank a
    single image (BatchNorm cannot normalise one image by its own statistics, so that rank would
    hold it back untrained) goes to fewer ranks instead, 2 or 3 images each, where a rank's batch
    takes 3; the ranks left without a part take that step with a zero loss (engine.training.trainer)."""
    k = len(batch)
    if not 2 <= k < 2 * world_size or share < 3:
        return batch[rank::world_size]
    pairs = k // 2
    if rank >= pairs:
        return batch[:0]
    return batch[2 * rank:k if rank == pairs - 1 else 2 * rank + 2]


def validation_share(n: int, rank: int, world_size: int) -> range:
    """This rank's validation images: every W-th, from position `rank`, none repeated."""
    return range(rank, n, world_size)


def interleaved(shares: list[torch.Tensor]) -> torch.Tensor:
    """The ranks' validation outputs (in rank order) back in the order of the validation set."""
    world = len(shares)
    total = sum(len(s) for s in shares)
    out = shares[0].new_empty((total, *shares[0].shape[1:]))
    for rank, share in enumerate(shares):
        out[rank::world] = share
    return out


class RankEpochShuffle(Sampler):
    """engine.data.dataset.EpochShuffle for one rank: its part of every global batch, in order."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int, world_size: int) -> None:
        self.n, self.seed, self.batch_size, self.rank, self.world_size = n, seed, batch_size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(p) for p in rank_batches(torch.arange(self.n), self.batch_size, self.rank, self.world_size))

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        for part in rank_batches(order, self.batch_size, self.rank, self.world_size):
            yield from part.tolist()


def rank_loader(dataset: ImageDataset, batch_size: int, train: bool, num_workers: int, seed: int, pin_memory: bool,
                rank: int, world_size: int) -> DataLoader:
    """engine.data.dataset.make_loader for one rank of `world_size`; `batch_size` is the global batch.
    The loader's batches of batch_size // W are exactly the rank's parts of the global batches,
    as each full global batch gives every rank the same number of images."""
    share = per_rank_batch_size(batch_size, world_size)
    sampler = (RankEpochShuffle(len(dataset), seed, batch_size, rank, world_size) if train
               else list(validation_share(len(dataset), rank, world_size)))
    return worker_loader(dataset, batch_size=share, sampler=sampler, drop_last=False, num_workers=num_workers,
                         pin_memory=pin_memory,
                         generator=torch.Generator().manual_seed(seed + rank))  # each rank augments its own images
