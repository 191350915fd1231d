"""Cached trunk features: when everything before the head is frozen, the trunk's output for an
image never changes (frozen norm layers are in eval mode, no augmentation), so compute it once
and train the head on the cached vectors: an epoch then costs milliseconds instead of a full
forward pass over every image.

With augmentation on, the trunk's output for one augmented view never changes either: compute V
views of every training image once and let each epoch draw one view per image (validation uses
the plain view). V forward passes instead of one per epoch, and the head still sees varied inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from engine.model import adabn
from engine.model.adabn import AdaptedStatistics
from engine.model.checkpoint import atomic_torch_save, safe_torch_load
from engine.model.folding import folded_for_inference
from engine.data.dataset import DecodedCache, Preprocessing, Sample, eval_transform, make_loader, normalize_batch
from engine.errors import UserError
from engine.model import timm_source
from engine.model.architectures import weights_cache_path
from engine.paths import cache_dir

MAX_CACHED_FEATURE_SETS = 20
FEATURE_MEMORY_FRACTION = 0.25  # augmented views may fill this share of the machine's memory


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


@contextmanager
def trunk_forward(model: nn.Module, head: str):
    """A function from images to what the head sees, for a model in eval mode: timm's forward_features +
    forward_head(pre_logits=True) for a timm model (its own split, no module swapped), else the model
    with its head removed and its BatchNorm layers folded into their convolutions (a copy)."""
    if timm_source.is_timm_model(model):
        yield lambda x: timm_source.trunk_features(model, x)
    else:
        with head_removed(model, head):
            yield folded_for_inference(model)


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
        with trunk_forward(model, head) as trunk:
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
                        out = trunk(x)
                    feats.append(out.float().flatten(1).cpu())
                    labels.append(batch.labels)
                if progress:
                    progress(i, len(loader))
    finally:
        model.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


# --- augmented views -------------------------------------------------------------------------


def feature_memory_budget() -> int:
    """Bytes the augmented views of one run may take in memory."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume a modest machine
        physical = 8 * 2**30
    return int(physical * FEATURE_MEMORY_FRACTION)


def compute_feature_views(views: int, seed: int, loader_for_seed: Callable[[int], object],
                          progress: Callable[[int, int, int], None] | None = None,
                          budget_bytes: int | None = None, **compute):
    """((V, N, D) features of V augmented views, labels (N,), note or None) for the training
    images; None when stopped. Each view's augmentation is seeded (seed, view), so the same
    settings give the same views. When V views would exceed the memory budget, fewer are
    computed and the note says so. `compute` is compute_features' keyword arguments."""
    budget = feature_memory_budget() if budget_bytes is None else budget_bytes
    stacked = labels = None
    wanted = views
    view = 0
    while view < views:
        view_seed = seed * 1009 + view  # one augmentation stream per view, not per epoch
        with torch.random.fork_rng(devices=[]):  # augmentation in this process uses the global RNG
            torch.manual_seed(view_seed)
            result = compute_features(loader=loader_for_seed(view_seed),
                                      progress=(lambda d, t, v=view: progress(v + 1, d, t)) if progress else None,
                                      **compute)
        if result is None:
            return None
        feats, view_labels = result
        if stacked is None:
            per_view = max(1, feats.numel() * feats.element_size())
            views = max(1, min(views, budget // per_view))
            stacked = torch.empty((views, *feats.shape), dtype=feats.dtype)
            labels = view_labels
        elif not torch.equal(view_labels, labels):
            raise UserError("the training images changed while their features were computed; start the run again")
        stacked[view] = feats
        view += 1
    note = None
    if views < wanted:
        note = (f"{views} of {wanted} views kept: {wanted} would take {wanted * per_view / 2**30:.1f} GiB, over the "
                f"{budget / 2**30:.1f} GiB budget for cached features")
    return stacked, labels, note


# --- the disk cache ---------------------------------------------------------------------------


def feature_cache_key(samples: Sequence[Sample], *, arch: str, weights: str, seed: int, head: str,
                      prep: Preprocessing, precision: str, device_type: str, augment: str = "none",
                      views: int = 0, adapt_norm_batch: int = 0) -> str:
    """Changes when anything that shapes the features changes: each file (path, size, mtime),
    the architecture, the weights file, the preprocessing, the precision and device kind, the
    augmented views (augmentation and V) and normalization statistics adapted to the data
    (`adapt_norm_batch`: AdaBN's batch size, which its averages depend on, as on its image count; 0: not adapted)."""
    digest = hashlib.sha256()
    if weights == "imagenet" or (weights in timm_source.PRETRAINED_WORDS and timm_source.is_timm(arch)):
        weights_file = weights_cache_path(arch)
    elif weights == "none":
        weights_file = None  # random init: the seed decides the trunk
    else:
        weights_file = Path(weights)
    identity = {"version": 1, "arch": arch, "weights": weights, "head": head, "prep": prep.to_dict(),
                "precision": precision, "device": device_type, "torch": torch.__version__,
                "seed": seed if weights_file is None else None,
                "weights_file": _file_identity(weights_file) if weights_file else None,
                "views": [augment, views] if views else None,
                "adapt_norm": [adapt_norm_batch, adabn.MAX_IMAGES] if adapt_norm_batch else None}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for sample in samples:
        digest.update(json.dumps([sample.path, sample.label, _file_identity(Path(sample.path))]).encode())
    return digest.hexdigest()[:32]


def _file_identity(path: Path) -> list:
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def feature_cache_path(key: str) -> Path:
    return cache_dir() / "features" / f"{key}.pt"


@dataclass(frozen=True)
class CachedFeatures:
    """One entry of the disk cache: the train and val feature sets, and for features of a trunk whose
    statistics were adapted (AdaBN), those statistics (None in files from before they were kept)."""

    train: Any
    val: Any
    statistics: AdaptedStatistics | None = None


def load_cached_features(key: str) -> CachedFeatures | None:
    """What was saved under `key`, or None."""
    path = feature_cache_path(key)
    if not path.exists():
        return None
    try:
        stored = safe_torch_load(path)
        cached = CachedFeatures(stored["train"], stored["val"],
                                AdaptedStatistics.from_dict(stored["statistics"]) if "statistics" in stored else None)
    except (UserError, KeyError, TypeError, OSError):
        return None  # unreadable or from another version: compute again
    try:
        os.utime(path)  # most recently used: pruned last
    except OSError:
        pass  # a read-only cache still serves what it holds
    return cached


def save_cached_features(key: str, train, val, statistics: AdaptedStatistics | None = None) -> str | None:
    """Save a feature set (with the adapted statistics it was computed with) and prune the oldest. The
    disk cache is only an optimisation: a cache folder that cannot be written (read-only, full, a file
    in its place) never fails the run. Returns None when saved, else a one-line note for the person."""
    path = feature_cache_path(key)
    stored = {"train": train, "val": val, **({"statistics": statistics.to_dict()} if statistics else {})}
    try:
        atomic_torch_save(stored, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        return (f"feature cache not saved to disk ({_reason(exc, path.parent)}); "
                f"features are computed again next run")
    try:
        files = sorted(path.parent.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in files[MAX_CACHED_FEATURE_SETS:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass  # pruning can wait for a later run
    return None


def _reason(exc: Exception, folder: Path) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or folder}: {exc.strerror or exc}"
    return f"{folder}: {(str(exc).strip().splitlines() or ['write failed'])[0][:120]}"


# --- per-file store -------------------------------------------------------------------------------
# Features keyed per image file rather than per dataset: moving a few files into another class
# (engine.curation.dataset_edits) changes the dataset's key above, but not a moved file's own features, so
# nothing needs a new trunk pass. A file is known by (device, inode, size, mtime_ns): a rename or a
# link-and-unlink keeps all four, an edit in place changes the mtime, a copy gets a new inode.

MAX_FILES_PER_STORE = 500_000  # entries kept per trunk: those of the dataset at hand first


def file_identity(path: str | os.PathLike) -> str | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def file_store_path(trunk_key: str) -> Path:
    """One store per trunk: `trunk_key` is feature_cache_key with no samples (model, weights,
    preprocessing, precision, device), so it changes with anything that shapes the features."""
    return cache_dir() / "file_features" / f"{trunk_key}.pt"


def load_file_store(trunk_key: str) -> dict[str, torch.Tensor]:
    """{file identity: (D,) features}; empty when there is none or it cannot be read."""
    try:
        stored = safe_torch_load(file_store_path(trunk_key))
        ids, features = stored["ids"], stored["features"]
        if not isinstance(ids, list) or len(ids) != len(features):
            return {}
    except (UserError, KeyError, TypeError, OSError):
        return {}
    return dict(zip(ids, features))


def save_file_store(trunk_key: str, store: dict[str, torch.Tensor], first: Sequence[str]) -> str | None:
    """Save the store (the ids in `first` kept before any other when it must shrink); None when
    saved, else a one-line note: the store is an optimisation only."""
    ordered = list(dict.fromkeys([i for i in first if i in store] + list(store)))[:MAX_FILES_PER_STORE]
    path = file_store_path(trunk_key)
    try:
        features = torch.stack([store[i] for i in ordered]) if ordered else torch.empty(0, 0)
        atomic_torch_save({"ids": ordered, "features": features}, path)
    except (OSError, RuntimeError) as exc:
        return f"per-file features not saved ({_reason(exc, path.parent)}); they are computed again next time"
    return None


def features_per_file(samples: Sequence[Sample], trunk_key: str,
                      compute: Callable[[list[Sample]], tuple[torch.Tensor, set[int]] | None]):
    """(features (N', D) of the decodable samples, their positions in `samples`, note or None), the
    trunk run only on the files the store lacks. `compute(samples)` returns (features of those that
    decoded, positions of those that did not) or None when stopped (then this returns None)."""
    store = load_file_store(trunk_key)
    ids = [file_identity(s.path) for s in samples]
    by_position = {i: store[key] for i, key in enumerate(ids) if key is not None and key in store}
    missing = [i for i in range(len(samples)) if i not in by_position]
    note = None
    if missing:
        result = compute([samples[i] for i in missing])
        if result is None:
            return None
        computed, failed = result
        fresh = [i for n, i in enumerate(missing) if n not in failed]
        for position, row in zip(fresh, computed):
            by_position[position] = row
            if ids[position] is not None:
                store[ids[position]] = row
        note = save_file_store(trunk_key, store, [key for key in ids if key])
    positions = sorted(by_position)
    if not positions:
        return torch.empty(0, 0), [], note
    return torch.stack([by_position[i] for i in positions]), positions, note


def trunk_store_key(*, arch: str, weights: str, seed: int, head: str, prep: Preprocessing,
                    amp_dtype: torch.dtype | None, device_type: str) -> str:
    """The per-file store's key for one trunk (feature_cache_key of no samples). Every caller builds it
    here, so a training and a suspects search at the same settings share one store."""
    precision = "float32" if amp_dtype is None else str(amp_dtype)
    return feature_cache_key((), arch=arch, weights=weights, seed=seed, head=head, prep=prep, precision=precision,
                             device_type=device_type)


def per_file_trunk_features(model: nn.Module, head: str, prep: Preprocessing, device: torch.device,
                            samples: Sequence[Sample], trunk_key: str, *, batch_size: int, seed: int,
                            workers: int = 0, pin: bool = False, autocast: Callable = contextlib.nullcontext,
                            channels_last: bool = False, progress: Callable[[int, int], None] | None = None,
                            on_failures: Callable[[list, list[Sample]], None] | None = None,
                            on_computed: Callable[[int], None] | None = None,
                            should_stop: Callable[[], bool] = lambda: False,
                            share: Callable[[Callable], Callable] = lambda compute: compute,
                            trunk_pass: Callable = compute_features,
                            decoded: Callable[[list[Sample]], DecodedCache | None] = lambda samples: None):
    """features_per_file's result for `samples` (None when stopped), the trunk run on the plain view
    of the files the store lacks. `on_failures(failures, batch)`: images that did not decode, indexed
    into the samples `batch` the trunk ran on; `on_computed(n)`: n images went through the trunk;
    `share(compute)`: how that work is split (engine.distributed.across_ranks), by default not at all;
    `trunk_pass`: compute_features, as the caller names it (its tests count the passes through that name);
    `decoded(samples)`: those samples' images already decoded, when the caller holds them."""
    def compute(missing: list[Sample]):
        failed: set[int] = set()

        def failures_found(failures) -> None:
            failed.update(index for index, _ in failures)
            if on_failures:
                on_failures(failures, missing)

        loader = make_loader(prep.dataset(missing, eval_transform(prep.crop), decoded(missing)), batch_size, False,
                             workers, seed, pin)
        result = trunk_pass(model, head, loader, prep, device, autocast, channels_last, progress=progress,
                            on_failures=failures_found, should_stop=should_stop)
        if result is None:
            return None
        if on_computed:
            on_computed(len(missing) - len(failed))
        return result[0], failed

    return features_per_file(samples, trunk_key, share(compute))
