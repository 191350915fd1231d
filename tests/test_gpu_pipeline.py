"""The GPU input pipeline's logic, checked on CPU: starting the next epoch's batches early (while
validation runs) must give exactly the batches the epoch would have had anyway."""

from __future__ import annotations

import torch

from engine.training.batches import ImageBatches, SkippedLog
from engine.data.dataset import ImageDataset, Preprocessing, eval_transform, make_loader, scan_dataset


def _batches(demo_dir, prefetch: bool) -> ImageBatches:
    scan = scan_dataset(demo_dir, val_fraction=0.25, seed=0)
    prep = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    train = make_loader(ImageDataset(scan.train, 32, eval_transform(32)), 8, True, 1, seed=0)
    source = ImageBatches(train, None, scan.train, scan.val, prep, torch.device("cpu"), False, SkippedLog())
    source.prefetch_next_epoch = prefetch
    return source


def _labels_of_epochs(source: ImageBatches, epochs) -> list[list[int]]:
    return [[int(v) for _, y in source.train_batches(epoch) for v in y] for epoch in epochs]


def test_a_prefetched_epoch_has_the_same_batches_as_one_started_on_demand(demo_dir):
    plain = _labels_of_epochs(_batches(demo_dir, prefetch=False), range(3))
    source = _batches(demo_dir, prefetch=True)
    prefetched = _labels_of_epochs(source, range(3))
    assert prefetched == plain
    assert plain[0] != plain[1]  # the epochs really are shuffled differently
    assert source._next_epoch is not None and source._next_epoch[0] == 3


def test_an_epoch_other_than_the_prefetched_one_starts_afresh(demo_dir):
    plain = _labels_of_epochs(_batches(demo_dir, prefetch=False), [0, 5])
    source = _batches(demo_dir, prefetch=True)
    assert _labels_of_epochs(source, [0, 5]) == plain  # epoch 1 was prefetched, 5 was asked for


def test_nothing_is_prefetched_past_the_last_epoch(demo_dir):
    source = _batches(demo_dir, prefetch=True)
    source.last_epoch = 2
    _labels_of_epochs(source, [1])
    assert source._next_epoch is not None and source._next_epoch[0] == 2
    _labels_of_epochs(source, [2])
    assert source._next_epoch is None
