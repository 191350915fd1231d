"""Loader workers are never forked from a process that runs Qt (issue 28), yield the same batches
whichever way they start, and a worker that dies is one line naming the cause."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import threading

import pytest
import torch

import engine.data.dataset as datasets
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import (DecodedCache, ImageDataset, Preprocessing, eval_transform, make_loader,
                                 scan_dataset, start_worker_server, worker_start_method)
from engine.distributed.process_group import SINGLE
from engine.distributed.sharding import rank_loader
from engine.errors import RunFailed, worker_death_message
from engine.events import Callbacks, TrainingControl
from engine.training.batches import ImageBatches, SkippedLog
import engine.training.setup as setup
from engine.training.setup import _Loaders, default_workers
from tests.conftest import ROOT
from tests.helpers_loader import FailingDataset

PREP = Preprocessing(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CPU = torch.device("cpu")
SAFE_METHODS = [m for m in ("forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]


def start_method(loader) -> str:
    return loader.multiprocessing_context.get_start_method()


def images_of(loader) -> list[torch.Tensor]:
    return [batch.images for batch in loader]


@pytest.fixture
def scan(demo_dir):
    return scan_dataset(demo_dir, 0.25, seed=0)


@pytest.fixture
def cached_dataset(scan):
    """The training images, most from a decoded cache, the rest decoded by the workers."""
    image_bytes = 3 * PREP.resize * PREP.resize  # the demo's images are square
    cache = DecodedCache(budget_bytes=image_bytes * len(scan.train) * 3 // 4)  # too small for every image
    cache.warm(scan.train, PREP.resize)
    assert 0 < len(cache.images) < len(scan.train)
    return ImageDataset(scan.train, PREP.resize, eval_transform(PREP.crop), cache)


@pytest.fixture
def started_with(monkeypatch):
    """Make loader workers start with the given method, whatever this process is."""
    def choose(method: str) -> None:
        monkeypatch.setattr(datasets, "worker_start_method", lambda: method)
    return choose


# --- never fork where Qt runs -------------------------------------------------------------------


def test_every_loader_built_while_a_qapplication_exists_avoids_fork(qapp, scan, cached_dataset):
    assert worker_start_method() != "fork"
    config = RunConfig(data=DataConfig(root=str(scan.root), image_size=32, augment="light", num_workers=2),
                       model=ModelConfig("resnet18", "none"), plan=PlanConfig(strategy="fine-tune"),
                       train=TrainConfig(batch_size=8, device="cpu"))
    loaders = _Loaders(config, scan, PREP, CPU, False, SkippedLog(), Callbacks(), TrainingControl(), SINGLE,
                       warm=False)
    built = [make_loader(cached_dataset, 8, True, 1, 0), make_loader(cached_dataset, 8, False, 2, 0),
             rank_loader(cached_dataset, 8, True, 1, 0, False, 1, 2),
             loaders.train_loader, loaders.val_loader, loaders.feature_loader(), loaders.plain_train_loader(),
             loaders.all_val_loader()]
    assert all(loader.num_workers for loader in built)
    assert "fork" not in {start_method(loader) for loader in built}


def test_a_loader_built_before_qt_started_rechooses_when_its_workers_start(qapp, cached_dataset):
    """Iterated off the GUI thread, as the LR finder's sweep is."""
    loader = make_loader(cached_dataset, 8, True, 1, seed=3)
    loader.multiprocessing_context = "fork"  # as if built before the window started
    got: list = []
    sweep = threading.Thread(target=lambda: got.extend(images_of(loader)))
    sweep.start()
    sweep.join(timeout=120)
    assert start_method(loader) != "fork"
    expected = images_of(make_loader(cached_dataset, 8, True, 0, seed=3))
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_the_window_can_start_the_worker_server_before_its_first_loader(qapp):
    assert start_worker_server() == SAFE_METHODS[0]
    assert start_worker_server() == SAFE_METHODS[0]  # once running, it stays


@pytest.mark.parametrize("method, cpu_workers", [("fork", 1), ("forkserver", 1), ("spawn", 0)])
def test_on_cpu_no_worker_is_chosen_where_each_would_be_spawned(method, cpu_workers, monkeypatch):
    """A spawned worker imports torch anew for every loader: seconds, more than it saves on CPU."""
    monkeypatch.setattr(setup, "worker_start_method", lambda: method)
    monkeypatch.setattr(setup.os, "cpu_count", lambda: 2)
    assert default_workers(CPU, cache_complete=False) == cpu_workers
    assert default_workers(CPU, cache_complete=True) == 0
    assert default_workers(torch.device("cuda"), cache_complete=False) == 2  # persistent: paid once


CLI_PROCESS = """
import multiprocessing, threading
from engine.data.dataset import worker_start_method
print(worker_start_method())
queue = multiprocessing.get_context("fork").Queue()
queue.put(1)  # its feeder thread, as a running loader's queues have
print(worker_start_method())
release = threading.Event()
other = threading.Thread(target=release.wait)
other.start()
print(worker_start_method())
release.set(); other.join()
import PySide6.QtCore
print(worker_start_method())
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="fork is not offered here")
def test_without_qt_and_with_one_thread_the_cli_keeps_fork():
    """In a fresh process: this one has Qt loaded for its other tests. A thread of the process's
    own makes it choose another start; a running loader's queue feeder does not."""
    out = subprocess.run([sys.executable, "-c", CLI_PROCESS], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out == ["fork", "fork", SAFE_METHODS[0], SAFE_METHODS[0]]


# --- the same batches, however workers start ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", SAFE_METHODS)
def test_workers_that_are_not_forked_yield_the_batches_of_no_workers(method, started_with, cached_dataset):
    """The dataset, its decoded cache, transform and collate cross to the workers pickled."""
    started_with(method)
    builders = [lambda workers: make_loader(cached_dataset, 8, True, workers, seed=5)]
    if method == "forkserver":  # spawn's start is the slow one: once is enough
        builders.append(lambda workers: rank_loader(cached_dataset, 8, True, workers, 5, False, 1, 2))
    for build in builders:
        loader = build(2 if method == "forkserver" else 1)
        got = images_of(loader)
        assert start_method(loader) == method
        expected = images_of(build(0))
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_a_decoded_cache_crosses_to_workers_as_one_shared_block(cached_dataset):
    cache = cached_dataset.cache
    before = {index: image.clone() for index, image in cache.images.items()}
    copy = pickle.loads(pickle.dumps(cache))
    for images in (cache.images, copy.images):
        assert images.keys() == before.keys()
        assert all(torch.equal(images[i], before[i]) for i in before)
    assert len({image.untyped_storage().data_ptr() for image in cache.images.values()}) == 1
    assert next(iter(cache.images.values())).is_shared()
    assert copy.failures == cache.failures and copy.used_bytes == cache.used_bytes


# --- a worker that dies -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how, method, cause", [
    ("kill", SAFE_METHODS[-1], "killed by signal 9"),  # spawn: the worker is this process's child
    ("exit", SAFE_METHODS[0], "exit code 1"),  # forkserver: the worker is the server's child
])
def test_a_dead_worker_is_one_line_naming_its_cause(how, method, cause, started_with, scan):
    """Read where a run reads its batches (ImageBatches), as the LR finder's sweep does."""
    started_with(method)
    loader = make_loader(FailingDataset(how), 2, True, 1, seed=0)
    batches = ImageBatches(loader, None, scan.train, [], PREP, CPU, False, SkippedLog())
    with pytest.raises(RunFailed) as failure:
        next(batches.train_batches(1))
    message = str(failure.value)
    assert message.startswith("a data-loading worker process died (") and message.endswith("; try --workers 0")
    assert "\n" not in message and cause in message
    if how == "kill":
        assert "often out of memory" in message


def test_an_error_inside_a_worker_is_not_taken_for_a_death(started_with):
    started_with(SAFE_METHODS[0])
    with pytest.raises(RuntimeError, match="item 0 failed") as failure:
        next(iter(make_loader(FailingDataset("raise"), 2, False, 1, seed=0)))
    assert not isinstance(failure.value, RunFailed)


@pytest.mark.parametrize("text, cause", [
    ("DataLoader worker (pid 13225) exited unexpectedly with exit code 1. Details are lost due to "
     "multiprocessing. Rerunning with num_workers=0 may give better error trace.", "(exit code 1)"),
    ("DataLoader worker (pid 17) is killed by signal: Killed. ", "(killed by signal: Killed, often out of memory)"),
    ("DataLoader worker (pid 17) is killed by signal: Segmentation fault. ", "(killed by signal: Segmentation fault)"),
    ("DataLoader worker (pid(s) 17, 18) exited unexpectedly", "(cause unknown)"),
])
def test_torchs_messages_about_a_dead_worker_become_one_line(text, cause):
    assert cause in worker_death_message(RuntimeError(text))
    assert worker_death_message(RuntimeError("CUDA error: device-side assert triggered")) is None
    assert "(killed by signal 11, SIGSEGV)" in worker_death_message(RuntimeError(text), [-11])


def test_the_window_says_a_dead_worker_in_its_own_words():
    from app.run_events import describe_failure

    message = describe_failure(RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    assert message.startswith("a data-loading worker process died") and "\n" not in message
    assert "--" not in message and "Batch size" in message  # the window's controls, not the CLI's flags
