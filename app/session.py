"""The window's one source of truth: the configuration the person is building, and the run.

Panels do not read one another. They show what the session tells them (its signals) and hand it
what the person edits (its methods); the main window only wires the two. The base LR, the
discriminative factor and the gradual interval live in the session's PlanConfig and nowhere
else. While a run is in progress the session holds that run's configuration and refuses edits,
so the window shows what trains and Save project saves it.

Loading what the configuration names (listing the dataset folder, building the model's layer
tree, checking a weights file) runs as background tasks; their results come back here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.worker import BackgroundTasks, ExportProcess, RunFailure, TrainingController
from engine.config import DataConfig, PlanConfig, RunConfig, TrainConfig
from engine.data import DatasetListing, DatasetScan, list_dataset, split_listing
from engine.demo import ensure_demo_dataset
from engine.errors import UserError
from engine.events import FitResult, RunStarted, SkippedFile
from engine.models import (ModelInfo, build_model, check_arch, check_image_size, min_image_size,
                           weights_cache_path)
from engine.plan import build_plan
from engine.run_folder import RunFolder, latest_run
from widgets.data_panel import thumbnail_strip

# What the window starts with: the guide's choice for a small dataset like the 240-image demo
# (feature extraction below 500 images), at a size that trains in seconds on a CPU.
WINDOW_DEFAULTS = RunConfig(
    data=DataConfig(image_size=96, augment="none"),
    plan=PlanConfig(strategy="feature-extraction"),
    train=TrainConfig(epochs=5),
)
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
    error: str = ""

    @property
    def listing_in_progress(self) -> bool:
        return bool(self.folder) and self.listing is None and not self.error


@dataclass(frozen=True)
class RunState:
    """The run the window shows: the one in progress, or the last one of this configuration."""

    folder: RunFolder | None = None  # None until the engine has created it
    config: RunConfig | None = None
    running: bool = False
    result: FitResult | None = None
    failure: RunFailure | None = None

    @property
    def can_export(self) -> bool:
        return not self.running and self.folder is not None and self.folder.has_checkpoint()

    @property
    def can_continue(self) -> bool:
        return not self.running and self.folder is not None and self.folder.can_resume()


def result_from_record(record: dict) -> FitResult | None:
    """The outcome a run folder's run.json records, when the run got that far."""
    raw = record.get("result")
    if not isinstance(raw, dict):
        return None
    try:
        return FitResult(
            run_dir=raw["run_dir"], checkpoint=raw["checkpoint"], best_epoch=raw["best_epoch"],
            best_val_accuracy=raw["best_val_accuracy"], epochs_run=raw["epochs_run"], seconds=raw["seconds"],
            images_per_second=raw["images_per_second"], stopped=raw["stopped"],
            skipped=tuple(SkippedFile(s["path"], s["reason"]) for s in raw.get("skipped", [])))
    except (KeyError, TypeError):
        return None


def _size_shapes_parameters(arch: str) -> bool:
    # A ViT's position embedding has one entry per patch: its parameter count follows the image size.
    return arch.startswith("vit_")


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

    def open(self, folder: str, split: tuple[float, int]) -> None:
        self._wanted_split = split
        self._set(DatasetState(folder=folder))
        self._split_timer.stop()
        self.tasks.cancel("split")
        stop_early = self.tasks.obsolete("listing")

        def job():
            listing = list_dataset(folder, should_stop=stop_early)
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

    def request(self, arch: str, classes: int, image_size: int) -> None:
        size = image_size if _size_shapes_parameters(arch) else 224
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
        self.tasks.submit("model", lambda: build_model(arch, classes, "none", size).info, self._on_built,
                          self._on_failed)

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
                return build_model(arch, classes, path).notes
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


class Session(QObject):
    dataset_changed = Signal(object)  # DatasetState
    thumbnails_ready = Signal(object)  # {class name: QImage strip}
    data_changed = Signal(object)  # DataConfig
    image_size_rule_changed = Signal(int, str)  # the architecture's minimum image size and why
    image_size_problem_changed = Signal(str)  # why the image size cannot work ("" when it can)
    model_changed = Signal(object)  # ModelConfig
    weights_files_changed = Signal(list)  # weights files offered besides ImageNet and random init
    weights_note_changed = Signal(str)  # where ImageNet weights come from, when that needs saying
    model_info_changed = Signal(object)  # ModelInfo, or None while it is being built
    model_failed = Signal(str)  # the architecture could not be built
    model_warning_changed = Signal(str)  # advice about the model and plan together ("" for none)
    plan_changed = Signal(object)  # PlanConfig
    train_changed = Signal(object)  # TrainConfig
    run_changed = Signal(object)  # RunState
    export_finished = Signal(str, list)  # the folder, one parity report (a dict) per file written
    export_failed = Signal(str)
    error_raised = Signal(str)  # one line the person must see ("" clears it)
    notice = Signal(str)  # one line for the status bar

    def __init__(self, runs_root: Path, parent=None):
        super().__init__(parent)
        self.runs_root = Path(runs_root)
        self.tasks = BackgroundTasks(self)
        self.controller = TrainingController(self)
        self.exporter = ExportProcess(self)
        self.datasets = DatasetLoader(self.tasks, self)
        self.describer = ModelDescriber(self.tasks, self)
        self.weights = WeightsFiles(self.tasks, self)
        self._data, self._model = WINDOW_DEFAULTS.data, WINDOW_DEFAULTS.model
        self._plan, self._train = WINDOW_DEFAULTS.plan, WINDOW_DEFAULTS.train
        self._download_failed: set[str] = set()  # architectures whose ImageNet weights did not download
        self._weights_before_file = self._model.weights  # where a refused weights file falls back to
        self._run = RunState()
        self._pending_folder: RunFolder | None = None  # a started run's folder, until the engine makes it
        self._export_folder = ""
        self.datasets.changed.connect(self._on_dataset_changed)
        self.datasets.thumbnails_ready.connect(self.thumbnails_ready)
        self.describer.changed.connect(self._on_model_info)
        self.describer.failed.connect(self.model_failed)
        self.weights.changed.connect(self.weights_files_changed)
        self.weights.passed.connect(self._on_weights_passed)
        self.weights.refused.connect(self._on_weights_refused)
        self.controller.run_started.connect(self._on_run_started)
        self.controller.run_finished.connect(self._on_run_finished)
        self.controller.run_failed.connect(self._on_run_failed)
        self.exporter.finished.connect(self._on_exported)
        self.exporter.failed.connect(self.export_failed)

    def announce(self) -> None:
        """Emit every signal once, so views connected just now show the whole state."""
        self._emit_configuration(self.config())
        self.weights_files_changed.emit(self.weights_files)
        self.dataset_changed.emit(self.dataset)
        self.run_changed.emit(self._run)

    # --- what panels ask ----------------------------------------------------------------------

    def config(self) -> RunConfig:
        """The configuration the window shows: the draft, or the run's while one is in progress."""
        if self._run.running and self._run.config is not None:
            return replace(self._run.config, out_dir="")
        return RunConfig(data=self._data, model=self._model, plan=self._plan, train=self._train)

    @property
    def dataset(self) -> DatasetState:
        return self.datasets.state

    @property
    def model_info(self) -> ModelInfo | None:
        return self.describer.info

    @property
    def run(self) -> RunState:
        return self._run

    @property
    def is_running(self) -> bool:
        return self._run.running

    @property
    def weights_files(self) -> list[str]:
        return list(self.weights.files)

    @property
    def is_ready(self) -> bool:
        """A dataset is split and its model's layer tree is built: Start can run."""
        return self.dataset.scan is not None and self.model_info is not None

    def start_problem(self) -> str:
        """Why Start cannot run now, in one line; "" when it can."""
        dataset, arch = self.dataset, self._model.arch
        if self._run.running:
            return "A run is in progress."
        if not dataset.folder:
            return "Choose a dataset folder first (or use the demo dataset)."
        if dataset.error:
            return f"The dataset folder cannot be used: {dataset.error}"
        if dataset.scan is None:
            return f"Still reading {dataset.folder}…"
        size_problem = self.image_size_problem()
        if size_problem:
            return size_problem
        if self.describer.problem:
            return f"{arch} cannot be built: {self.describer.problem}"
        if self.model_info is None:
            return f"Still building {arch}…"
        return self._weights_problem()

    def image_size_problem(self) -> str:
        try:
            check_image_size(self._model.arch, self._data.image_size)
        except UserError as exc:
            return str(exc)
        return ""

    def _weights_problem(self) -> str:
        if self._model.weights == "imagenet" and weights_cache_path(self._model.arch) is None:
            return f"{self._model.arch} has no ImageNet weights in torchvision: choose random init or a weights file."
        return ""

    def weights_note(self) -> str:
        arch = self._model.arch
        if self._model.weights != "imagenet":
            return ""
        path = weights_cache_path(arch)
        if path is None:
            return self._weights_problem()
        if path.exists():
            return ""
        if arch in self._download_failed:
            return (f"ImageNet weights for {arch} are not cached and could not be downloaded: "
                    f"put {path.name} into {path.parent}, or choose random init or a file.")
        return f"ImageNet weights not cached yet: downloaded on Start, or put {path.name} into {path.parent}."

    def model_warning(self) -> str:
        info = self.model_info
        if self._model.weights != "none" or info is None:
            return ""
        try:
            plan = build_plan(self._plan, info)
        except UserError:
            return ""
        if any(plan.effective(stage).frozen for stage in info.stages):
            return ("Random-init weights with frozen layers: those layers stay random. "
                    "Choose ImageNet weights or a file, or fine-tune all.")
        return ""

    # --- the dataset ---------------------------------------------------------------------------

    @Slot(str)
    def open_folder(self, folder: str) -> None:
        if not folder or self._refused_while_running("open another dataset"):
            return
        self._data = replace(self._data, root=folder)
        self.data_changed.emit(self._data)
        self._forget_run_of_another_configuration()
        self.datasets.open(folder, self._split_settings())

    @Slot()
    def open_demo(self) -> None:
        if not self._refused_while_running("open another dataset"):
            self.datasets.open_demo(self.open_folder)

    def _split_settings(self) -> tuple[float, int]:
        return self._data.val_fraction, self._train.seed

    @Slot(object)
    def _on_dataset_changed(self, state: DatasetState) -> None:
        self.dataset_changed.emit(state)
        if state.listing is not None:
            self._describe_model()  # the class count may have changed

    # --- data, model, plan and training settings ---------------------------------------------------

    @Slot(dict)
    def update_data(self, changes: dict) -> None:
        """Validation share, image size or augmentation, as edited in the data panel."""
        new = replace(self._data, **changes)
        if new == self._data or self._refused_while_running("change the data settings"):
            return
        old, self._data = self._data, new
        self.data_changed.emit(new)
        if new.val_fraction != old.val_fraction:
            self.datasets.split(self._split_settings())
        if new.image_size != old.image_size:
            self.image_size_problem_changed.emit(self.image_size_problem())
            self._describe_model()

    @Slot(dict)
    def update_train(self, changes: dict) -> None:
        new = replace(self._train, **changes)
        if new == self._train or self._refused_while_running("change the training settings"):
            return
        old, self._train = self._train, new
        self.train_changed.emit(new)
        if new.seed != old.seed:  # the seed decides the split too
            self.datasets.split(self._split_settings())

    @Slot(str)
    def set_arch(self, arch: str) -> None:
        if arch == self._model.arch or self._refused_while_running("change the architecture"):
            return
        self._model = replace(self._model, arch=arch)
        self._model_changed()
        self.image_size_rule_changed.emit(*min_image_size(arch))
        self.image_size_problem_changed.emit(self.image_size_problem())
        self._describe_model()
        if self._model.weights not in ("imagenet", "none"):  # a file made for one model may not fit another
            self.weights.check(self._model.weights, arch, self._classes())

    @Slot(str)
    def set_weights(self, weights: str) -> None:
        if weights == self._model.weights or self._refused_while_running("change the weights"):
            return
        self._weights_before_file = self._model.weights
        self._model = replace(self._model, weights=weights)
        self._model_changed()
        if weights not in ("imagenet", "none"):
            self.weights.check(weights, self._model.arch, self._classes())

    def _model_changed(self) -> None:
        self.model_changed.emit(self._model)
        self.weights_note_changed.emit(self.weights_note())
        self.model_warning_changed.emit(self.model_warning())
        self._forget_run_of_another_configuration()

    @Slot(str, list)
    def _on_weights_passed(self, path: str, notes: list) -> None:
        self.error_raised.emit("")
        self.notice.emit(" · ".join(notes))

    @Slot(str, str)
    def _on_weights_refused(self, path: str, message: str) -> None:
        fallback = self._weights_before_file if self._weights_before_file != path else "imagenet"
        if self._model.weights == path and not self._run.running:
            self._model = replace(self._model, weights=fallback)
            self._model_changed()
        self.error_raised.emit(f"{message} (weights set back to {self._model.weights})")

    @Slot(str)
    def apply_preset(self, strategy: str) -> None:
        """A strategy preset replaces the person's tree edits; the LR settings stay."""
        self._set_plan(replace(self._plan, strategy=strategy, edits=()))

    @Slot(float)
    def set_base_lr(self, lr: float) -> None:
        self._set_plan(replace(self._plan, base_lr=lr))

    @Slot(float)
    def set_discriminative_factor(self, factor: float) -> None:
        self._set_plan(replace(self._plan, discriminative_factor=factor))

    @Slot(int)
    def set_gradual_every(self, epochs: int) -> None:
        self._set_plan(replace(self._plan, gradual_every=epochs))

    @Slot(object)
    def adopt_plan(self, plan: PlanConfig) -> None:
        """An edit made in the layer tree (a Frozen box, an LR cell), already checked by the engine."""
        self._set_plan(plan)

    def _set_plan(self, plan: PlanConfig) -> None:
        if plan == self._plan:
            return
        if self._refused_while_running("change the plan"):
            self.plan_changed.emit(self._run.config.plan)  # puts the tree back to what trains
            return
        self._plan = plan
        self.plan_changed.emit(plan)
        self.model_warning_changed.emit(self.model_warning())

    def _emit_configuration(self, config: RunConfig) -> None:
        """Tell the views every part of `config` and what follows from it."""
        self.data_changed.emit(config.data)
        self.model_changed.emit(config.model)
        self.plan_changed.emit(config.plan)
        self.train_changed.emit(config.train)
        self.image_size_rule_changed.emit(*min_image_size(config.model.arch))
        self.image_size_problem_changed.emit(self.image_size_problem())
        self.weights_note_changed.emit(self.weights_note())
        self.model_warning_changed.emit(self.model_warning())

    def apply_config(self, config: RunConfig) -> bool:
        """Show a whole configuration (a project file, a run to continue): all of it or, when any
        part cannot work, none of it (the reason goes to error_raised)."""
        if self._refused_while_running("open a project"):
            return False
        try:
            config.validate()
            check_arch(config.model.arch)
        except UserError as exc:
            self.error_raised.emit(str(exc))
            return False
        old_weights = self._model.weights
        self._data, self._model, self._plan, self._train = config.data, config.model, config.plan, config.train
        self._emit_configuration(config)
        self._forget_run_of_another_configuration()
        dataset = self.dataset
        if self._data.root and (self._data.root != dataset.folder or dataset.error):
            self.datasets.open(self._data.root, self._split_settings())
        elif self._data.root:
            self.datasets.split(self._split_settings())
        self._describe_model()
        if self._model.weights not in ("imagenet", "none") and self._model.weights != old_weights:
            self._weights_before_file = old_weights
            self.weights.check(self._model.weights, self._model.arch, self._classes())
        return True

    def reset(self) -> None:
        """Back to the window's defaults on the demo dataset."""
        if self.apply_config(WINDOW_DEFAULTS):
            self.open_demo()

    def _refused_while_running(self, what: str) -> bool:
        if self._run.running:
            self.notice.emit(f"A run is in progress: stop it to {what}.")
            return True
        return False

    # --- the model's layer tree ------------------------------------------------------------------

    def _classes(self) -> int:
        listing = self.dataset.listing
        return max(2, len(listing.class_names)) if listing is not None else 2

    def _describe_model(self) -> None:
        self.describer.request(self._model.arch, self._classes(), self._data.image_size)

    @Slot(object)
    def _on_model_info(self, info: ModelInfo | None) -> None:
        if info is not None:
            try:
                build_plan(self._plan, info)
            except UserError as exc:  # tree edits (from a project) that this model does not have
                self._plan = replace(self._plan, edits=())
                self.error_raised.emit(f"The layer edits do not fit {info.arch} and were dropped: {exc}")
        self.model_info_changed.emit(info)
        if info is not None:
            self.plan_changed.emit(self._plan)
            self.model_warning_changed.emit(self.model_warning())

    # --- the run --------------------------------------------------------------------------------------

    def start(self) -> bool:
        problem = self.start_problem()
        if problem:
            self.error_raised.emit(problem)
            return False
        folder = self._new_run_folder()
        config = replace(self.config(), out_dir=str(folder.path))
        try:
            config.validate()
        except UserError as exc:
            self.error_raised.emit(str(exc))
            return False
        self._launch(config, folder, resume=False)
        return True

    def continue_run(self) -> bool:
        """Resume the shown run from its last completed epoch up to the Epochs setting."""
        run = self._run
        if run.running:
            return False
        if not run.can_continue:
            self.error_raised.emit("No run to continue: a run saves its state after each completed epoch.")
            return False
        try:
            saved = run.folder.load_config()
        except UserError as exc:
            self.error_raised.emit(str(exc))
            return False
        config = replace(saved, train=replace(saved.train, epochs=self._train.epochs))
        if not self.apply_config(replace(config, out_dir="")):
            return False
        self._launch(replace(config, out_dir=str(run.folder.path)), run.folder, resume=True)
        return True

    def _launch(self, config: RunConfig, folder: RunFolder, resume: bool) -> None:
        self._pending_folder = folder
        self._set_run(RunState(folder=folder if resume else None, config=config, running=True))
        self.controller.start(config, resume=resume, scan=None if resume else self._scan_for(config))

    def _scan_for(self, config: RunConfig) -> DatasetScan | None:
        """The split shown, when it is the one the run asks for: the run need not list the folder
        again (a second or more for thousands of images)."""
        dataset = self.dataset
        if dataset.folder == config.data.root and dataset.split == (config.data.val_fraction, config.train.seed):
            return dataset.scan
        return None

    def _new_run_folder(self) -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.runs_root / f"{self._model.arch}-{stamp}"
        path, n = base, 1
        while path.exists():  # two runs in one second must not share a folder
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return RunFolder(path)

    def stop(self) -> None:
        self.controller.stop()

    def set_paused(self, paused: bool) -> None:
        self.controller.set_paused(paused)

    @Slot(object)
    def _on_run_started(self, event: RunStarted) -> None:
        self._set_run(replace(self._run, folder=RunFolder(event.run_dir)))

    @Slot(object)
    def _on_run_finished(self, result: FitResult) -> None:
        self._set_run(replace(self._run, running=False, result=result, folder=RunFolder(result.run_dir)))

    @Slot(object)
    def _on_run_failed(self, failure: RunFailure) -> None:
        pending = self._pending_folder
        folder = pending if pending is not None and pending.exists() else None  # never created: not named
        if failure.kind == "weights-unavailable":
            self._download_failed.add(self._run.config.model.arch)
            self.weights_note_changed.emit(self.weights_note())
        self._set_run(replace(self._run, running=False, failure=failure, folder=folder))

    def _set_run(self, state: RunState) -> None:
        self._run = state
        self.run_changed.emit(state)

    def _forget_run_of_another_configuration(self) -> None:
        """A run's result, plots, folder and checkpoint belong to its dataset and model: once
        another is opened they are no longer shown."""
        run = self._run
        if run.running or run.config is None:
            return
        if run.config.data.root != self._data.root or run.config.model != self._model:
            self._set_run(RunState())

    def restore_latest_run(self) -> bool:
        """After a restart: show the newest run under the runs folder (its configuration, folder
        and outcome), so Continue and Export work on it. False when there is none to show."""
        run = latest_run(self.runs_root)
        return run is not None and self.open_run(run)

    def open_run(self, run: RunFolder) -> bool:
        """Show a past run (its configuration, folder and outcome), so Continue and Export work on
        it. False, and nothing changed, when it cannot be shown."""
        if self._run.running:
            return False
        try:
            record = run.read_record()
            config = run.load_config()
        except UserError:
            return False
        if not Path(config.data.root).expanduser().is_dir():
            return False
        if not self.apply_config(replace(config, out_dir="")):
            return False
        self._set_run(RunState(folder=run, config=config, result=result_from_record(record)))
        return True

    # --- export ---------------------------------------------------------------------------------------

    def export_checkpoint(self) -> Path | None:
        """The shown run's best checkpoint, when there is one to export."""
        return self._run.folder.checkpoint_path if self._run.can_export else None

    def export(self, folder: str, formats: list[str]) -> None:
        """Write each format into `folder` (in a child process); each is checked for parity first."""
        checkpoint = self.export_checkpoint()
        if checkpoint is None:
            self.export_failed.emit("No checkpoint to export yet: train first.")
            return
        target = Path(folder).expanduser()
        if not target.is_dir():
            self.export_failed.emit(f"Export folder not found: {target}. Choose an existing folder.")
            return
        if not os.access(target, os.W_OK):
            self.export_failed.emit(f"Cannot write into {target}: choose another folder.")
            return
        self._export_folder = folder
        self.exporter.start(checkpoint, target.resolve(), formats)

    @Slot(list)
    def _on_exported(self, reports: list) -> None:
        self.export_finished.emit(self._export_folder, reports)

    def shutdown(self) -> None:
        """The window closes: stop the run and the export, drop background results."""
        self.controller.stop_and_wait()
        self.exporter.stop_and_wait()
        self.datasets.stop()
        self.tasks.shutdown()


def _thumbnails(listing: DatasetListing, should_stop) -> dict:
    """The first few images of each class as one strip per class (QImages: made off the GUI thread);
    a dataset opened meanwhile stops the work."""
    first: dict[int, list[str]] = {}
    for sample in listing.samples:
        paths = first.setdefault(sample.label, [])
        if len(paths) < THUMBNAILS_PER_CLASS:
            paths.append(sample.path)
    strips = {}
    for label, name in enumerate(listing.class_names):
        if should_stop():
            break
        strips[name] = thumbnail_strip(first.get(label, []))
    return strips

