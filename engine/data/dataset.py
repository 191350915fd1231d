"""Datasets: scan a folder, split it, decode robustly, transform, batch, cache decoded images.

Two layouts: `root/<class>/<image>` (split here, stratified and seeded) or
`root/train/<class>` + `root/val/<class>` (used as given); or a labels CSV (engine.data.label_table)
for multi-label, regression or single-label data, with its own split column or split here. Class order is sorted like torchvision's
ImageFolder, so label indices match it. A file that cannot be used is skipped and listed with
its reason, at scan time or when it fails to decode in the middle of an epoch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from engine.errors import RunFailed, UserError, worker_death_message
from engine.events import SkippedFile  # noqa: F401 - re-exported: a scan reports the files it skips
from engine.data.copies import copies_across, identical_files
from engine.data.images import INTERPOLATIONS, BadImage, decode_resized, is_image_file, probe

IMBALANCE_WARNING = 3.0  # largest / smallest class from which a scan warns (and auto class weights switch on)

@dataclass(frozen=True)
class Sample:
    path: str
    # single-label: the class index; multi-label: a multi-hot tuple of 0.0/1.0 per label;
    # regression: the target value. Batches collate each into the tensor its task's loss takes.
    label: int | tuple[float, ...] | float


@dataclass(frozen=True)
class DatasetScan:
    root: str
    layout: str  # "folders" (split here) or "train-val" (given)
    class_names: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    skipped: tuple[SkippedFile, ...]
    image_sizes: dict = field(default_factory=dict)  # min/median/max of width and height
    copies: tuple[tuple[str, ...], ...] = ()  # groups of byte-identical files (engine.data.copies)
    task: str = "single-label"  # engine.data.label_table.TASKS

    @property
    def total(self) -> int:
        return len(self.train) + len(self.val)

    def leaks(self) -> list[tuple[str, str]]:
        """(validation file, identical training file): validation images the model trains on."""
        return copies_across(self.copies, (s.path for s in self.train), (s.path for s in self.val))

    def class_counts(self) -> list[dict]:
        """Images per class (multi-label: per label present; regression: one row, "value")."""
        counts = [{"class": name, "train": 0, "val": 0} for name in self.class_names]
        for split in ("train", "val"):
            for sample in getattr(self, split):
                for index in present_labels(sample, self.task):
                    counts[index][split] += 1
        return counts

    def imbalance(self) -> float:
        """Largest over smallest class, over train and val together (inf with an empty class)."""
        totals = [c["train"] + c["val"] for c in self.class_counts()]
        return float("inf") if min(totals) == 0 else max(totals) / min(totals)

    def warnings(self) -> list[str]:
        """Problems worth a person's attention before training."""
        notes = []
        totals = [c["train"] + c["val"] for c in self.class_counts()]
        what = "label" if self.task == "multi-label" else "class"
        tiny = [n for n, t in zip(self.class_names, totals) if t < 10] if self.task != "regression" else []
        if tiny:
            notes.append(f"{len(tiny)} {what}(s) with fewer than 10 images: {', '.join(tiny[:5])}")
        if math.isfinite(self.imbalance()) and self.imbalance() >= IMBALANCE_WARNING:
            notes.append(f"{what} imbalance: largest {what} has {self.imbalance():.1f}x the smallest")
        if self.skipped:
            notes.append(f"{len(self.skipped)} file(s) skipped")
        leaks = self.leaks()
        if leaks:
            val_file, train_file = leaks[0]
            notes.append(f"{len(leaks)} validation image(s) have an identical copy in training, which inflates "
                         f"validation accuracy: e.g. {_short(val_file, self.root)} = {_short(train_file, self.root)}")
        return notes

    def summary(self) -> dict:
        summary = {
            "root": self.root,
            "layout": self.layout,
            "task": self.task,
            "classes": self.class_counts(),
            "total": self.total,
            "image_sizes": self.image_sizes,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "leaks": [{"val": v, "train": t} for v, t in self.leaks()],
            "warnings": self.warnings(),
        }
        if self.task == "multi-label":
            from engine.data.label_table import co_occurrence

            sets = [present_labels(s, self.task) for s in self.train + self.val]
            summary["co_occurrence"] = co_occurrence(sets, len(self.class_names))
            summary["without_label"] = sum(1 for labels in sets if not labels)
        elif self.task == "regression":
            from engine.data.label_table import value_summary

            summary["values"] = value_summary([float(s.label) for s in self.train + self.val])
        return summary


def _short(path: str, root: str) -> str:
    return os.path.relpath(path, root) if path.startswith(root) else path


def present_labels(sample: Sample, task: str) -> list[int]:
    """The class indices a sample counts for: its class, its labels present, or 0 (regression's one)."""
    if task == "multi-label":
        return [i for i, on in enumerate(sample.label) if on]
    if task == "regression":
        return [0]
    return [sample.label]


def scan_dataset(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0,
                 task: str = "auto") -> DatasetScan:
    return split_listing(list_dataset(root, task=task), val_fraction, seed)


@dataclass(frozen=True)
class DatasetListing:
    """A dataset folder's usable files, found and probed once.

    Splitting a listing touches no file, so a new validation share or seed does not rescan the
    folder (the window re-splits on every step of its Validation box).
    """

    root: str
    layout: str  # "folders" (split here) or "train-val" (given)
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]  # every usable file; in the "train-val" layout those of train/
    given_val: tuple[Sample, ...]  # the usable files of val/ in the "train-val" layout, else empty
    skipped: tuple[SkippedFile, ...]
    image_sizes: dict = field(default_factory=dict)  # min/median/max of width and height
    copies: tuple[tuple[str, ...], ...] = ()  # groups of byte-identical files, found once here
    task: str = "single-label"

    @property
    def total(self) -> int:
        return len(self.samples) + len(self.given_val)


def list_dataset(root: str | os.PathLike, should_stop: Callable[[], bool] = lambda: False,
                 task: str = "auto", known_labels: Sequence[str] | None = None) -> DatasetListing:
    """Find and probe every image of a dataset folder or labels CSV; raises UserError for one that
    cannot be a dataset. `should_stop()` abandons a listing nobody waits for any more (returns what
    was probed so far). `task`: auto, or the task the data must give (a folder gives single-label)."""
    from engine.data.label_table import check_task, is_label_table

    check_task(task)
    if is_label_table(root):
        return _list_table(root, task, should_stop, known_labels)
    if task not in ("auto", "single-label"):
        raise UserError(f"--task {task} needs a labels CSV (path,labels or path,value); class folders give "
                        f"single-label data")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    train_dir, val_dir = root_path / "train", root_path / "val"
    given_val: list[Sample] = []
    if has_train_val_split(root_path):
        class_names = class_dirs(train_dir)
        unknown = sorted(set(class_dirs(val_dir)) - set(class_names))
        if unknown:
            raise UserError(f"val/ has classes that train/ lacks: {', '.join(unknown)}")
        seen = _Seen()  # a file reached through train/ and val/ counts once
        samples, skipped, sizes = _probe_files(_image_files(train_dir, class_names, seen, should_stop), should_stop)
        given_val, skipped_v, sizes_v = _probe_files(_image_files(val_dir, class_names, seen, should_stop),
                                                     should_stop)
        layout, skipped, sizes = "train-val", skipped + skipped_v, sizes + sizes_v
    else:
        class_names = class_dirs(root_path)
        samples, skipped, sizes = _probe_files(_image_files(root_path, class_names, _Seen(), should_stop),
                                               should_stop)
        layout = "folders"
    if len(class_names) < 2:
        raise UserError(f"{root} needs at least 2 class sub-folders, found {len(class_names)}")
    present = {s.label for s in samples} | {s.label for s in given_val}
    empty = [name for i, name in enumerate(class_names) if i not in present]
    if empty:
        raise UserError(f"class folder(s) without a usable image: {', '.join(empty)}")
    copies = identical_files([s.path for s in (*samples, *given_val)], should_stop)
    return DatasetListing(str(root_path), layout, tuple(class_names), tuple(samples), tuple(given_val),
                          tuple(skipped), _size_stats(sizes), copies)


def _list_table(csv_path, task: str, should_stop: Callable[[], bool],
                known_labels: Sequence[str] | None) -> DatasetListing:
    """A labels CSV's usable rows as samples (bad rows and undecodable images skipped, with reasons)."""
    from engine.data.label_table import read_label_table

    table = read_label_table(csv_path, task, known_labels)
    names = table.label_names
    index = {name: i for i, name in enumerate(names)}

    def target(row):
        if table.task == "regression":
            return row.value
        if table.task == "single-label":
            return index[row.labels[0]]
        return tuple(1.0 if name in row.labels else 0.0 for name in names)

    skipped = [SkippedFile(b.path, b.describe()) for b in table.bad]
    given = any(row.split for row in table.rows)
    rows = list(table.rows)
    if given:  # the split column is used as given: a row without one has no place
        skipped += [SkippedFile(Path(r.path).name, f"line {r.line}: no split value (the split column is used as given)")
                    for r in rows if not r.split]
        rows = [r for r in rows if r.split]
    train_rows = [(Path(r.path), target(r)) for r in rows if r.split != "val"]
    val_rows = [(Path(r.path), target(r)) for r in rows if r.split == "val"]
    samples, bad_images, sizes = _probe_files(train_rows, should_stop)
    given_val, bad_val, sizes_v = _probe_files(val_rows, should_stop)
    if not samples and not given_val:
        raise UserError(f"{csv_path} has no usable row ({len(skipped) + len(bad_images)} bad: "
                        f"{(skipped + bad_images)[0].reason if skipped or bad_images else 'empty'})")
    if table.task != "regression" and not names:
        raise UserError(f"{csv_path} names no label in any usable row")
    copies = identical_files([s.path for s in (*samples, *given_val)], should_stop)
    return DatasetListing(table.root, "csv-split" if given else "csv", names, tuple(samples), tuple(given_val),
                          tuple(skipped + bad_images + bad_val), _size_stats(sizes + sizes_v), copies, task=table.task)


def split_listing(listing: DatasetListing, val_fraction: float, seed: int) -> DatasetScan:
    """The scan for one split of a listing: stratified and seeded, or train/ and val/ as given."""
    if listing.layout in ("train-val", "csv-split"):
        train, val = listing.samples, listing.given_val
    else:
        train, val = stratified_split(listing.samples, val_fraction, seed, strata(listing.samples, listing.task))
    return DatasetScan(root=listing.root, layout=listing.layout, class_names=listing.class_names,
                       train=tuple(train), val=tuple(val), skipped=listing.skipped, image_sizes=listing.image_sizes,
                       copies=listing.copies, task=listing.task)


VALUE_STRATA = 5  # regression: values split within this many quantile bins, so both splits span the range


def strata(samples: Sequence[Sample], task: str) -> Callable[[Sample], object] | None:
    """What a seeded split stratifies by, where the label is not one class: a multi-label image by
    its rarest label (none: its own stratum), a value by its quantile bin. None: by the class."""
    if task == "multi-label":
        counts = [0] * (len(samples[0].label) if samples else 0)
        for s in samples:
            for i, on in enumerate(s.label):
                counts[i] += bool(on)
        return lambda s: min((i for i, on in enumerate(s.label) if on), key=lambda i: (counts[i], i), default=-1)
    if task == "regression":
        ordered = sorted(float(s.label) for s in samples)
        bins = max(1, min(VALUE_STRATA, len(ordered) // 4))
        edges = [ordered[len(ordered) * b // bins] for b in range(1, bins)]
        return lambda s: sum(float(s.label) >= e for e in edges)
    return None


class _Seen:
    """The real folders and files a dataset walk has met, by (device, inode)."""

    def __init__(self) -> None:
        self.dirs: set[tuple[int, int]] = set()
        self.files: set[tuple[int, int]] = set()


def _identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _image_files(folder: Path, class_names: Sequence[str], seen: _Seen | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> list[tuple[Path, int]]:
    """(path, label) of every file with an image extension under the class folders, sorted
    (each folder's files, then its sub-folders in name order, like os.walk).

    Links to folders are followed, but each real folder is walked once and a link back to a
    folder enclosing the dataset is not followed at all: `ln -s . loop` or a link to `/` would
    otherwise make the walk count every file many times or never end. A file reached twice
    (through a link, or hard-linked) counts once."""
    seen = _Seen() if seen is None else seen
    enclosing = {i for i in map(_identity, (folder, *Path(os.path.abspath(folder)).parents)) if i}
    found: list[tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        stack = [folder / name]
        while stack and not should_stop():
            directory = stack.pop()
            ident = _identity(directory)
            if ident is None or ident in seen.dirs or ident in enclosing:
                continue
            seen.dirs.add(ident)
            try:
                with os.scandir(directory) as entries:
                    listed = [(e.name, _is_dir(e)) for e in entries]
            except OSError:
                continue  # unreadable folder: nothing found in it (os.walk did the same)
            for fname in sorted(n for n, is_dir in listed if not is_dir):
                path = directory / fname
                if not is_image_file(path):
                    continue
                file_ident = _identity(path)
                if file_ident is not None:
                    if file_ident in seen.files:
                        continue
                    seen.files.add(file_ident)
                found.append((path, label))
            subdirs = sorted(n for n, is_dir in listed if is_dir and not n.startswith("."))
            stack.extend(directory / d for d in reversed(subdirs))
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _probe_files(files: list[tuple[Path, int]], should_stop: Callable[[], bool]):
    """Probe the files one after another. A thread pool here made the window stall for up to
    0.8 s: thousands of tiny hand-overs of the GIL starve the GUI thread; one thread does not,
    and on a local disk it is faster too (a probe reads a header, not the image)."""
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    sizes: list[tuple[int, int]] = []
    for path, label in files:
        if should_stop():
            break
        try:
            sizes.append(probe(path))
            samples.append(Sample(str(path), label))
        except BadImage as exc:
            skipped.append(SkippedFile(str(path), str(exc)))
    return samples, skipped, sizes


def has_train_val_split(root: Path) -> bool:
    """The "root/train/<class>/ + root/val/<class>/" layout, used as given instead of split here."""
    return (root / "train").is_dir() and (root / "val").is_dir() and bool(class_dirs(root / "train"))


def class_dirs(folder: Path) -> list[str]:
    # "_excluded" (engine.curation.dataset_edits) and other "_" folders hold set-aside images, not a class.
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith((".", "_")))


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int,
                     stratum: Callable[[Sample], object] | None = None):
    """Per class (or per `stratum`), a seeded shuffle; round(n * fraction) go to validation (at
    least one when n >= 2)."""
    by_class: dict = {}
    for sample in samples:
        by_class.setdefault(sample.label if stratum is None else stratum(sample), []).append(sample)
    train, val = [], []
    rng = random.Random(seed)
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction) if val_fraction > 0 else 0
        if val_fraction > 0 and len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    key = lambda s: (s.label, s.path)  # noqa: E731 - stable order independent of the shuffle
    return sorted(train, key=key), sorted(val, key=key)


def _size_stats(sizes: list[tuple[int, int]]) -> dict:
    if not sizes:
        return {}
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {
        "width": {"min": min(widths), "median": int(statistics.median(widths)), "max": max(widths)},
        "height": {"min": min(heights), "median": int(statistics.median(heights)), "max": max(heights)},
    }


# --- preprocessing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the model: resize (shorter side, with the filter the weights
    were evaluated with), centre crop, normalize."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown resize interpolation {self.interpolation!r}; "
                             f"expected one of {', '.join(INTERPOLATIONS)}")

    def to_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, raw: dict) -> Preprocessing:
        # Checkpoints and exports made before the interpolation was recorded were all resized bilinearly.
        return cls(int(raw["resize"]), int(raw["crop"]), tuple(raw["mean"]), tuple(raw["std"]),
                   str(raw.get("interpolation") or "bilinear"))

    def decode(self, path: Path) -> torch.Tensor:
        """The image decoded and resized (not yet cropped): uint8 (3, H, W)."""
        return decode_resized(Path(path), self.resize, self.interpolation)

    def dataset(self, samples: Sequence[Sample], transform, cache: DecodedCache | None = None) -> ImageDataset:
        return ImageDataset(samples, self.resize, transform, cache, self.interpolation)


def train_transform(augment: str, crop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Augmentation on uint8 tensors that are already resized (shorter side = preprocessing.resize)."""
    if augment == "standard":
        return v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip()])
    if augment == "light":
        return v2.Compose([v2.CenterCrop(crop), v2.RandomHorizontalFlip()])
    return v2.CenterCrop(crop)


def eval_transform(crop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return v2.CenterCrop(crop)


def normalize_batch(images: torch.Tensor, prep: Preprocessing, dtype=torch.float32) -> torch.Tensor:
    """uint8 (N,3,H,W) on any device -> normalized float. Done per batch, on the model's device."""
    mean = torch.tensor(prep.mean, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (images.to(dtype) - mean) / std


# --- decoded-image cache and the dataset --------------------------------------------------------


TIMED_DECODES = 16  # images decoded in one thread first, to time them
THREADS_PAY_FROM_S = 0.0005  # per image: below this, two decoding threads mostly wait for the GIL


class DecodedCache:
    """Decoded, resized uint8 images kept in RAM within a byte budget.

    Decoding a JPEG costs milliseconds; augmenting a small uint8 tensor costs microseconds. So
    every image is decoded once (threads: Pillow releases the GIL while decoding) and epochs
    after that only augment. Bad files are remembered too, so they are not retried every epoch.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.images: dict[int, torch.Tensor] = {}
        self.failures: dict[int, str] = {}
        self._packed: PackedImages | None = None  # self.images in one block, made when first pickled

    def put(self, index: int, image: torch.Tensor) -> bool:
        size = image.numel() * image.element_size()
        if self.used_bytes + size > self.budget_bytes:
            return False
        self.images[index] = image
        self.used_bytes += size
        self._packed = None
        return True

    def __getstate__(self) -> dict:
        """What a worker started by spawn or forkserver receives. The images go as one block of
        shared memory, which every worker maps: pickled one by one, each of thousands of images
        would be a shared-memory file (and a file descriptor) of its own."""
        if self._packed is None:
            self._packed = PackedImages.of(self.images)
            self.images = self._packed.unpacked()  # views into the block: the cache is not held twice
        state = dict(self.__dict__)
        state["images"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.images = self._packed.unpacked()

    def warm(self, samples: Sequence[Sample], side: int, progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] = lambda: False, interpolation: str = "bilinear") -> None:
        """Decode every sample into the cache; returns early when `should_stop()`, so a Stop pressed
        while thousands of images decode takes effect within one image per thread.

        The first images are decoded in this thread and timed. Threads pay only when an image takes
        long enough to decode (Pillow releases the GIL while it decodes): for tiny images, such as
        the digits' PNGs at 0.4 ms each, two threads handing the GIL back and forth took 0.6 s for
        1,437 where one took 0.4-0.5 s; from 160x120 JPEGs (0.5 ms) on, two threads are faster."""
        def decode(index: int):
            try:
                return index, decode_resized(Path(samples[index].path), side, interpolation), None
            except BadImage as exc:
                return index, None, str(exc)

        first = range(min(len(samples), TIMED_DECODES))
        seconds: list[float] = []

        def timed(index: int):
            started = time.perf_counter()
            decoded = decode(index)
            seconds.append(time.perf_counter() - started)
            return decoded

        if not self._keep(map(timed, first), 0, len(samples), progress, should_stop):
            return
        rest = range(len(first), len(samples))
        if statistics.median(seconds or [0.0]) < THREADS_PAY_FROM_S:  # the median: the first open loads Pillow's plugins
            self._keep(map(decode, rest), len(first), len(samples), progress, should_stop)
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
        try:
            self._keep(pool.map(decode, rest), len(first), len(samples), progress, should_stop)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # don't decode what will not be kept

    def _keep(self, decoded, done: int, total: int, progress, should_stop) -> bool:
        """Put decoded images into the cache; False when it stopped early (asked to, or the budget spent)."""
        for done, (index, image, error) in enumerate(decoded, done + 1):
            if should_stop():
                return False
            if error is not None:
                self.failures[index] = error
            elif not self.put(index, image):
                return False  # budget spent: the rest is decoded on the fly, during the epochs
            if progress is not None:
                progress(done, total)
        return True

    @property
    def complete_for(self) -> int:
        return len(self.images) + len(self.failures)


@dataclass(frozen=True)
class PackedImages:
    """Images laid end to end in one flat uint8 tensor, in shared memory when there is any."""

    block: torch.Tensor
    places: tuple[tuple[int, int, tuple[int, ...]], ...]  # (index, offset into the block, shape)

    @classmethod
    def of(cls, images: dict[int, torch.Tensor]) -> PackedImages:
        total = sum(image.numel() for image in images.values())
        block = torch.empty(total, dtype=torch.uint8)
        if total:
            block.share_memory_()  # before filling: moving a full block there would copy it again
        places, offset = [], 0
        for index, image in images.items():
            block[offset:offset + image.numel()].copy_(image.reshape(-1))
            places.append((index, offset, tuple(image.shape)))
            offset += image.numel()
        return cls(block, tuple(places))

    def unpacked(self) -> dict[int, torch.Tensor]:
        return {index: self.block[offset:offset + math.prod(shape)].view(shape)
                for index, offset, shape in self.places}


class ImageDataset(Dataset):
    """Returns (uint8 image or None, label, index, failure reason)."""

    def __init__(self, samples: Sequence[Sample], side: int, transform, cache: DecodedCache | None = None,
                 interpolation: str = "bilinear"):
        self.samples = list(samples)
        self.side = side
        self.interpolation = interpolation
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        label = self.samples[index].label
        image = self.cache.images.get(index) if self.cache else None
        if image is None:
            if self.cache and index in self.cache.failures:
                return None, label, index, self.cache.failures[index]
            try:
                image = decode_resized(Path(self.samples[index].path), self.side, self.interpolation)
            except BadImage as exc:
                return None, label, index, str(exc)
        return self.transform(image), label, index, ""


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (N,3,H,W)
    labels: torch.Tensor
    failures: list[tuple[int, str]]  # dataset indices that could not be decoded, with reasons

    def pin_memory(self):
        self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        return self


def labels_tensor(labels: list) -> torch.Tensor:
    """The batch tensor of samples' labels: int64 class indices, or float32 (N, K) multi-hot rows or
    (N,) values (the same tensor collate makes, for labels gathered without a loader)."""
    if not labels:
        return torch.empty(0, dtype=torch.long)
    return torch.tensor(labels, dtype=torch.long if isinstance(labels[0], int) else torch.float32)


def collate(items) -> Batch:
    good = [(img, label) for img, label, _, reason in items if img is not None]
    failures = [(index, reason) for img, _, index, reason in items if img is None]
    if not good:
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), failures)
    return Batch(torch.stack([g[0] for g in good]), labels_tensor([g[1] for g in good]), failures)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of an epoch: a function of (seed, epoch) alone, so the cached-feature
    path, the image path and a resumed run all see the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def drops_last_batch(n: int, batch_size: int) -> bool:
    # A final batch of one breaks BatchNorm in train mode; drop it only in that case.
    return n > 1 and n % batch_size == 1


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Steps in one epoch of `n` training samples, as the training loader makes them (at least one)."""
    return max(1, n // batch_size if drops_last_batch(n, batch_size) else math.ceil(n / batch_size))


class EpochShuffle(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(epoch_order(self.n, self.seed, self.epoch).tolist())


def make_loader(dataset: ImageDataset, batch_size: int, train: bool, num_workers: int, seed: int,
                pin_memory: bool = False) -> DataLoader:
    return worker_loader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(len(dataset), seed) if train else None,
        drop_last=train and drops_last_batch(len(dataset), batch_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),  # seeds the workers' augmentation RNGs
    )


def worker_loader(dataset: Dataset, *, batch_size: int, sampler, drop_last: bool, num_workers: int,
                  pin_memory: bool, generator: torch.Generator) -> DataLoader:
    """Every DataLoader of the engine is built here: its workers start the way worker_start_method
    says, and stay up for the loader's lifetime (the training loaders are iterated every epoch, so
    a spawned worker's start is paid once, not per epoch)."""
    num_workers = max_workers(num_workers)
    return WorkerLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory, generator=generator,
                        multiprocessing_context=worker_context() if num_workers else None,
                        persistent_workers=num_workers > 0)


def max_workers(requested: int) -> int:
    """Loader worker processes, at most one per CPU: `--workers 100000` must not try to start them
    all (a project file written on a bigger machine still runs here)."""
    return max(0, min(requested, os.cpu_count() or 1))


# --- loader worker processes -------------------------------------------------------------------

QT_MODULES = ("PySide6.QtCore", "PySide2.QtCore", "PyQt6.QtCore", "PyQt5.QtCore")


def worker_start_method() -> str:
    """How loader worker processes start in this process, now.

    Forking copies a process with the locks its other threads hold at that instant; a worker
    forked from a process with Qt's threads (the window, its LR finder, suspects, evaluation) can
    deadlock or die (issue 28). So "fork" (the fastest start, see docs/benchmarks.md) only where
    it is safe: a platform where fork is sound, no Qt loaded, no other thread. Elsewhere the
    forkserver (a clean single-threaded process that forks the workers), else "spawn"."""
    if fork_is_safe():
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def fork_is_safe() -> bool:
    # macOS lists fork, but its system libraries are not fork-safe once threads ran.
    fork_sound = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
    return fork_sound and not qt_is_loaded() and not other_threads()


# A running loader's worker queues each have a feeder thread: it holds only that queue's own locks,
# which a worker of another loader never takes. Counted, they would make a run's second loader (the
# validation one) wait seconds for a forkserver where forking takes 0.1 s.
HARMLESS_THREADS = ("QueueFeederThread",)


def other_threads() -> list[threading.Thread]:
    """The Python threads, besides this one, that a fork would copy mid-work."""
    current = threading.current_thread()
    return [t for t in threading.enumerate() if t is not current and t.name not in HARMLESS_THREADS]


def qt_is_loaded() -> bool:
    """Whether this process runs Qt, asked without importing it. Qt's threads are not Python
    threads, so threading.active_count() does not see them."""
    return any(name in sys.modules for name in QT_MODULES)


# The forkserver imports these once; each worker it forks then starts with torch and this module
# already imported, instead of importing them anew as a spawned worker does.
FORKSERVER_PRELOAD = ["__main__", __name__]


def worker_context(method: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start with (worker_start_method by default)."""
    context = multiprocessing.get_context(method or worker_start_method())
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(FORKSERVER_PRELOAD)  # no effect once the server runs
    return context


def start_worker_server() -> str:
    """Start the forkserver now, where loader workers will start from it, so that the first
    loader does not wait for the server's imports (seconds: docs/benchmarks.md). For a process
    that knows early it will load images from a thread, such as the window. Returns the method."""
    method = worker_start_method()
    if method == "forkserver":
        import multiprocessing.forkserver  # not on every platform

        worker_context(method)  # its preload first
        multiprocessing.forkserver.ensure_running()
    return method


class WorkerLoader(DataLoader):
    """A DataLoader that picks its workers' start method when it starts them, not only when it is
    built (threads or Qt may have started in between), and reports a worker that died as one line
    (RunFailed) where its batches are read, instead of torch's RuntimeError."""

    def _get_iterator(self):
        # torch calls this each time it starts workers (once, as they persist).
        if self.num_workers > 0:
            self.multiprocessing_context = worker_context()
            # Relative image paths mean what they mean here: a forkserver's workers would
            # otherwise start in the folder the server started in.
            self.worker_init_fn = functools.partial(_work_in, os.getcwd())
        return super()._get_iterator()

    def __iter__(self):
        batches = super().__iter__()
        return _WorkerDeathsReported(batches) if self.num_workers > 0 else batches


def _work_in(folder: str, worker_id: int) -> None:
    os.chdir(folder)


class _WorkerDeathsReported:
    """A loader's batches, with a worker's death raised as RunFailed naming its cause."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def __next__(self):
        with worker_deaths_reported(lambda: _worker_exit_codes(self.batches)):
            return next(self.batches)


@contextlib.contextmanager
def worker_deaths_reported(exit_codes: Callable[[], Sequence[int]] = tuple):
    """Raise torch's RuntimeError about a dead loader worker as RunFailed in one line (see
    engine.errors.worker_death_message); any other error as it is."""
    try:
        yield
    except RuntimeError as exc:
        message = worker_death_message(exc, exit_codes())
        if message is None:
            raise
        raise RunFailed(message) from exc


def _worker_exit_codes(batches) -> list[int]:
    """Exit codes of the loader's workers that ended (negative: the signal that killed one)."""
    workers = getattr(batches, "_workers", [])  # torch's iterator keeps its worker Processes there
    return [w.exitcode for w in workers if w.exitcode not in (None, 0)]


def fold_of(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """(N,) fold index of each image: each class dealt round the folds in a seeded order, so every
    fold holds its share of every class."""
    generator = torch.Generator().manual_seed(seed)
    assignment = torch.empty(len(labels), dtype=torch.long)
    offset = 0
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = (torch.arange(len(members)) + offset) % folds
        offset += len(members)  # small classes start where the last one ended: folds stay even
    return assignment
