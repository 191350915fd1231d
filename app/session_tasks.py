"""The session's background helpers: listing and splitting the dataset folder, building a model's
structure for the layer tree, checking a weights file. Each runs its work as a BackgroundTasks job
and says what it found with a signal; the dataset and settings controllers (app/dataset_controller.py,
app/settings_controller.py) wire them into the configuration."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from PySide6.QtCore import QObject, QTimer, Signal

from app.worker import BackgroundTasks
from engine.data.dataset import DatasetListing, DatasetScan, list_dataset, present_labels, split_listing
from engine.data.demo import ensure_demo_dataset
from engine.errors import UserError
from engine.model.architectures import ModelInfo, build_model, check_image_size
from widgets.data_panel import thumbnail_strip


SPLIT_DELAY_MS = 250  # a burst of Validation-box steps makes one split, not one per step
MAX_WEIGHTS_FILES = 5
THUMBNAILS_PER_CLASS = 3


@dataclass(frozen=True)
class DatasetState:
    """The dataset folder and what is known of it so far."""

    folder: str = ""
    listing: DatasetListing | None = None
    scan: DatasetScan | None = None  # the listing split as the settings say
    summary: dict | None = None  # scan.summary(): class counts, warnings, skipped files
    split: tuple[float, int] | None = None  # the (validation share, seed) the scan was split with
    task: str = "auto"  # the task the data was listed for (DataConfig.task): a CSV's rows depend on it
    error: str = ""

    @property
    def listing_in_progress(self) -> bool:
        return bool(self.folder) and self.listing is None and not self.error


def size_shapes_parameters(arch: str) -> bool:
    # A ViT's position embedding has one entry per patch: its parameter count follows the image size.
    return arch.startswith("vit_")


def structure_size(arch: str, image_size: int) -> int:
    """The image size a model's structure is built for: 224 unless the size changes its parameters."""
    return image_size if size_shapes_parameters(arch) else 224


def without_random_draws(build: Callable):
    """`build()` on the meta device: a model whose structure alone is wanted then costs no memory and
    draws nothing from torch's global random generator, which a run training on another thread was
    seeded with (a draw here would change that run). The few models that cannot be built there
    (RegNets copy tensors while building) are built as usual."""
    try:
        with torch.device("meta"):  # thread-local: other threads keep building real tensors
            return build()
    except (NotImplementedError, RuntimeError):
        return build()


def model_structure(arch: str, classes: int, size: int):
    """A randomly initialised model to read the structure of (layers, parameters, groups); one
    output is allowed (a regression's value, a multi-label set of one label)."""
    return without_random_draws(lambda: build_model(arch, classes, "none", size, min_classes=1))


_STRUCTURES: OrderedDict[tuple[str, int, int], ModelInfo] = OrderedDict()
_STRUCTURES_KEPT = 8
_structures_lock = threading.Lock()


def structure_info(arch: str, classes: int, size: int) -> ModelInfo:
    """model_structure(...).info, built once for the layer tree, the plan check and the advice alike:
    an efficientnet_v2_s costs 0.3-0.5 s of Python, and two background builds at once held the GIL
    from the GUI thread for 60-100 ms while a project opened. One build at a time (the lock): a
    second caller of the same structure waits for the first's, without computing."""
    key = (arch, classes, size)
    with _structures_lock:
        if key not in _STRUCTURES:
            _STRUCTURES[key] = model_structure(arch, classes, size).info
            while len(_STRUCTURES) > _STRUCTURES_KEPT:
                _STRUCTURES.popitem(last=False)
        _STRUCTURES.move_to_end(key)
        return _STRUCTURES[key]


class DatasetLoader(QObject):
    """Lists a dataset folder once, off the GUI thread, and splits the listing as often as asked
    (a burst of changes makes one split). Thumbnails follow the listing."""

    changed = Signal(object)  # DatasetState
    thumbnails_ready = Signal(object)  # {class name: QImage strip}

    def __init__(self, tasks: BackgroundTasks, parent=None):
        super().__init__(parent)
        self.tasks = tasks
        self.state = DatasetState()
        self._wanted_split: tuple[float, int] = (0.0, 0)
        self._split_timer = QTimer(self)
        self._split_timer.setSingleShot(True)
        self._split_timer.setInterval(SPLIT_DELAY_MS)
        self._split_timer.timeout.connect(self._split)

    def open(self, folder: str, split: tuple[float, int], task: str = "auto") -> None:
        """List a class folder or a labels CSV (`task`: what it must give, auto: what its columns say)."""
        self._wanted_split = split
        self._set(DatasetState(folder=folder, task=task))
        self._split_timer.stop()
        self.tasks.cancel("split")
        stop_early = self.tasks.obsolete("listing")

        def job():
            listing = list_dataset(folder, should_stop=stop_early, task=task)
            scan = split_listing(listing, *split)
            return listing, scan, scan.summary(), split

        self.tasks.submit("listing", job, self._on_listed, self._on_failed)

    def open_demo(self, on_made) -> None:
        """Make the demo dataset (first time only), then hand its folder to `on_made`."""
        self._set(DatasetState(folder="(making the demo dataset…)"))
        self.tasks.submit("demo", lambda: str(ensure_demo_dataset()), on_made, self._on_failed)

    def split(self, split: tuple[float, int]) -> None:
        """Split again (no file is read), shortly: only the last of a burst of changes splits."""
        self._wanted_split = split
        if self.state.listing is not None:
            self._split_timer.start()

    def stop(self) -> None:
        self._split_timer.stop()

    def _on_listed(self, result) -> None:
        listing, scan, summary, split = result
        self._set(replace(self.state, listing=listing, scan=scan, summary=summary, split=split, error=""))
        stop_early = self.tasks.obsolete("thumbnails")
        self.tasks.submit("thumbnails", lambda: _thumbnails(listing, stop_early), self.thumbnails_ready.emit,
                          lambda _: None)
        if split != self._wanted_split:  # changed while the folder was read
            self._split_timer.start()

    def _split(self) -> None:
        listing, split = self.state.listing, self._wanted_split
        if listing is None:
            return

        def job():
            scan = split_listing(listing, *split)
            return listing, scan, scan.summary(), split

        self.tasks.submit("split", job, self._on_split, self._on_failed)

    def _on_split(self, result) -> None:
        listing, scan, summary, split = result
        if listing is self.state.listing:  # not a split of a folder since replaced
            self._set(replace(self.state, scan=scan, summary=summary, split=split))

    def _on_failed(self, message: str) -> None:
        self._set(replace(self.state, listing=None, scan=None, summary=None, error=message))

    def _set(self, state: DatasetState) -> None:
        self.state = state
        self.changed.emit(state)


class ModelDescriber(QObject):
    """Builds the layer tree's ModelInfo off the GUI thread, again only when what it depends on
    changes: the architecture, the class count and, for a ViT, the image size."""

    changed = Signal(object)  # ModelInfo, or None while it is being built
    failed = Signal(str)

    def __init__(self, tasks: BackgroundTasks, parent=None):
        super().__init__(parent)
        self.tasks = tasks
        self.info: ModelInfo | None = None
        self.problem = ""  # why the last request could not be built
        self._key: tuple | None = None

    def known(self, arch: str, image_size: int) -> ModelInfo | None:
        """The structure built, when it is `arch`'s at `image_size` (its module names: the class count
        does not change them); None while it is being built or is another model's."""
        if self.info is None or self._key is None:
            return None
        built_arch, _classes, built_size = self._key
        return self.info if (built_arch, built_size) == (arch, structure_size(arch, image_size)) else None

    def request(self, arch: str, classes: int, image_size: int) -> None:
        size = structure_size(arch, image_size)
        key = (arch, classes, size)
        if key == self._key:
            return
        try:
            check_image_size(arch, size)
        except UserError as exc:  # a ViT is only built for a size it accepts
            self._key, self.info, self.problem = None, None, str(exc)
            self.failed.emit(self.problem)
            return
        self._key, self.info, self.problem = key, None, ""
        self.changed.emit(None)
        self.tasks.submit("model", lambda: structure_info(arch, classes, size), self._on_built,
                          self._on_failed)

    def wait(self) -> None:
        """What the model is built for is not known yet (the classes are being listed): none is shown."""
        self.tasks.cancel("model")  # a build on its way is for a class count that no longer holds
        if self._key is not None or self.info is not None:
            self._key, self.info, self.problem = None, None, ""
            self.changed.emit(None)

    def _on_built(self, info: ModelInfo) -> None:
        self.info = info
        self.changed.emit(info)

    def _on_failed(self, message: str) -> None:
        self.info, self.problem = None, message
        self.failed.emit(message)


class WeightsFiles(QObject):
    """The weights files on offer: each is loaded once when chosen (a file that does not fit is
    refused now, not at Start), and only the few most recent that loaded stay offered."""

    changed = Signal(list)  # the files on offer, newest first
    passed = Signal(str, list)  # the file, what loading it said
    refused = Signal(str, str)  # the file, why in one line

    def __init__(self, tasks: BackgroundTasks, parent=None):
        super().__init__(parent)
        self.tasks = tasks
        self.files: list[str] = []

    def check(self, path: str, arch: str, classes: int) -> None:
        if path not in self.files:
            self._offer([path] + self.files)  # offered while it is checked

        def job():
            try:
                return build_model(arch, classes, path, min_classes=1).notes
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a file torch cannot parse raises anything
                raise UserError(f"{Path(path).name} is not a weights file that can be read "
                                f"({type(exc).__name__}: {str(exc)[:80]})") from None

        def passed(notes: list[str]) -> None:
            self._offer(([path] + [f for f in self.files if f != path])[:MAX_WEIGHTS_FILES])
            self.passed.emit(path, notes)

        def refused(message: str) -> None:
            self._offer([f for f in self.files if f != path])
            self.refused.emit(path, message)

        self.tasks.submit("weights", job, passed, refused)

    def _offer(self, files: list[str]) -> None:
        self.files = files
        self.changed.emit(list(files))


def _thumbnails(listing: DatasetListing, should_stop) -> dict:
    """The first few images of each class as one strip per class (QImages: made off the GUI thread);
    a dataset opened meanwhile stops the work."""
    first: dict[int, list[str]] = {}
    for sample in listing.samples:
        for label in present_labels(sample, listing.task):  # a multi-label image shows under each of its labels
            paths = first.setdefault(label, [])
            if len(paths) < THUMBNAILS_PER_CLASS:
                paths.append(sample.path)
    strips = {}
    for label, name in enumerate(listing.class_names):
        if should_stop():
            break
        strips[name] = thumbnail_strip(first.get(label, []))
    return strips
