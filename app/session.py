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
from PySide6.QtGui import QUndoStack

from app.data_edit_session import BUSY as DATA_EDIT_BUSY, DataEdits, SuspectFinder
from app.plan_history import MERGE_BASE_LR, MERGE_FACTOR, MERGE_GRADUAL_EVERY, PlanChange, advice_changes
from app.session_tasks import (DatasetLoader, DatasetState, ModelDescriber, WeightsFiles, size_shapes_parameters,
                               model_structure, without_random_draws)
from app.worker import BackgroundTasks, ExportProcess, TrainingController
from app.run_events import RunFailure
from engine.insight.advisor import Advice, advise
from engine.config import DataConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import DatasetScan, batches_per_epoch
from engine.errors import UserError
from engine.events import FitResult, RunStarted, SkippedFile
from engine.model.architectures import ModelInfo, check_arch, check_image_size, min_image_size, weights_cache_path
from engine.plan.optimization import schedule_preview
from engine.plan.plan import build_plan
from engine.runs.run_folder import RunFolder, latest_run

# What the window starts with: the guide's choice for a small dataset like the 240-image demo
# (feature extraction below 500 images), at a size that trains in seconds on a CPU.
WINDOW_DEFAULTS = RunConfig(
    data=DataConfig(image_size=96, augment="none"),
    plan=PlanConfig(strategy="feature-extraction"),
    train=TrainConfig(epochs=5),
)
SCHEDULE_DELAY_MS = 250  # a burst of edits makes one schedule preview
# Advice waits until the window has laid out and painted what changed: a model built on a background
# thread meanwhile takes the GIL from the painting GUI thread (a first paint of 50 ms instead of 25).
ADVICE_DELAY_MS = 250
ADVICE_FOLLOWED = "Presets follow the advice (Ctrl+Z undoes)"
SEARCHING = "Suspects are being found: start when that is done (or Stop it)."


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


def _pretrained_weights_at_hand(arch: str, weights: str) -> bool:
    """Measuring the backbone needs its weights without a download: a file, or cached ImageNet ones."""
    if weights == "none":
        return False  # random features measure nothing the table does not already say
    if weights != "imagenet":
        return True
    path = weights_cache_path(arch)
    return path is not None and path.exists()


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
    advice_pending = Signal()  # the dataset or model changed: advice is being worked out
    advice_ready = Signal(object, bool)  # Advice, whether the configuration is already the advice's
    advice_failed = Signal(str)
    advice_applied_changed = Signal(bool)  # after any plan edit: is the configuration still the advice's
    advice_followed = Signal(str)  # a first dataset's presets followed the advice: the line that says so
    schedule_previewed = Signal(list)  # schedule_preview's entries for the shown plan ([] when none)
    run_preview_ready = Signal(str, object, object)  # a past run's folder, its ModelInfo and PlanConfig
    data_edited = Signal(str, object)  # a dataset folder, the engine's Action: the files it moved (or back)

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
        self.plan_history = QUndoStack(self)  # plan changes, presets and applied advice: Ctrl+Z takes them back
        # Moves of the dataset's files share the one stack: Ctrl+Z takes back the last thing done, whichever it was.
        self.data_edits = DataEdits(self.tasks, self.plan_history, self)
        # Its model would draw from the random numbers a run is seeded with: one never runs beside a run.
        self.suspect_finder = SuspectFinder(self.tasks, self)
        self._plan_edited = False  # the person changed the plan: advice never follows by itself
        self._advice: Advice | None = None
        self._advised_folders: set[str] = set()  # datasets advice was given for: only a first one is followed
        self._schedule_timer = QTimer(self)
        self._schedule_timer.setSingleShot(True)
        self._schedule_timer.setInterval(SCHEDULE_DELAY_MS)
        self._schedule_timer.timeout.connect(self._preview_schedule)
        self._advice_timer = QTimer(self)
        self._advice_timer.setSingleShot(True)
        self._advice_timer.setInterval(ADVICE_DELAY_MS)
        self._advice_timer.timeout.connect(self._advise)
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
        self.data_edits.edited.connect(self._on_data_edited)
        self.data_edits.repaired.connect(self.notice)
        self.data_edits.failed.connect(self.notice)

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
    def scan(self) -> DatasetScan | None:
        """The split shown, when it is the one the configuration asks for (else None: read again)."""
        return self._scan_for(self.config())

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
        if self.data_edits.busy:
            return "The dataset's files are being moved: start when that is done."
        if self.suspect_finder.searching:
            return SEARCHING
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
        self._open_dataset(folder)

    def _open_dataset(self, folder: str) -> None:
        """List the folder, once what a crash left half-done in its journal of edits is completed."""
        self.data_edits.repair(folder, lambda: self.datasets.open(folder, self._split_settings()))

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
        if state.scan is not None:
            self._request_advice()
            self._schedule_timer.start()  # an epoch's steps follow the training split
        elif state.error or state.listing_in_progress:  # the last advice was for another dataset
            self._advice = None
            self.tasks.cancel("advice")
            if state.error:
                self.advice_failed.emit("No advice: the dataset folder cannot be used.")
            else:
                self.advice_pending.emit()

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
            self._request_advice()  # the advice weighs the images' size against it
        self._configuration_edited()

    @Slot(dict)
    def update_train(self, changes: dict) -> None:
        new = replace(self._train, **changes)
        if new == self._train or self._refused_while_running("change the training settings"):
            return
        old, self._train = self._train, new
        self.train_changed.emit(new)
        if new.seed != old.seed:  # the seed decides the split too
            self.datasets.split(self._split_settings())
        self._configuration_edited()

    @Slot(str)
    def set_arch(self, arch: str) -> None:
        if arch == self._model.arch or self._refused_while_running("change the architecture"):
            return
        self._model = replace(self._model, arch=arch)
        self._model_changed()
        self.image_size_rule_changed.emit(*min_image_size(arch))
        self.image_size_problem_changed.emit(self.image_size_problem())
        self._describe_model()
        self._request_advice()
        if self._model.weights not in ("imagenet", "none"):  # a file made for one model may not fit another
            self.weights.check(self._model.weights, arch, self._classes())

    @Slot(str)
    def set_weights(self, weights: str) -> None:
        if weights == self._model.weights or self._refused_while_running("change the weights"):
            return
        self._weights_before_file = self._model.weights
        self._model = replace(self._model, weights=weights)
        self._model_changed()
        self._request_advice()
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
        self._plan_edited = True  # the person chose a strategy, even the one shown: advice does not overrule it
        self._edit_plan(replace(self._plan, strategy=strategy, edits=()), f"Preset {strategy}")

    @Slot(float)
    def set_base_lr(self, lr: float) -> None:
        self._edit_plan(replace(self._plan, base_lr=lr), "Base LR", MERGE_BASE_LR)

    @Slot(float)
    def set_discriminative_factor(self, factor: float) -> None:
        self._edit_plan(replace(self._plan, discriminative_factor=factor), "Discriminative factor", MERGE_FACTOR)

    @Slot(int)
    def set_gradual_every(self, epochs: int) -> None:
        self._edit_plan(replace(self._plan, gradual_every=epochs), "Gradual interval", MERGE_GRADUAL_EVERY)

    @Slot(object)
    def adopt_plan(self, plan: PlanConfig) -> None:
        """An edit made in the layer tree (a Frozen box, an LR cell), already checked by the engine."""
        self._edit_plan(plan, "Layer tree edit")

    @Slot(object)
    def adopt_scaled_plan(self, plan: PlanConfig) -> None:
        """The LR finder's plan: every LR times one multiplier."""
        self._edit_plan(plan, "LR finder")

    def _edit_plan(self, plan: PlanConfig, text: str, merge_key: int = -1) -> None:
        if plan == self._plan:
            return
        if self._refused_while_running("change the plan"):
            self.plan_changed.emit(self._run.config.plan)  # puts the tree back to what trains
            return
        self._plan_edited = True
        self.plan_history.push(PlanChange(self._put, text, (self._plan, plan), merge_key=merge_key))

    def _put(self, plan: PlanConfig, data: dict, train: dict) -> None:
        """What a PlanChange does and undoes: the plan, and the data and training fields it names."""
        if data:
            self._data = replace(self._data, **data)
            self.data_changed.emit(self._data)
        if train:
            self._train = replace(self._train, **train)
            self.train_changed.emit(self._train)
        self._plan = plan
        self.plan_changed.emit(plan)
        self.model_warning_changed.emit(self.model_warning())
        self._configuration_edited()

    def undo(self) -> None:
        if not self._refused_while_running("undo") and not self._refused_while_editing_files():
            self.plan_history.undo()

    def redo(self) -> None:
        if not self._refused_while_running("redo") and not self._refused_while_editing_files():
            self.plan_history.redo()

    # --- mending the dataset's files -----------------------------------------------------------------

    def relabel_images(self, paths: list[str], class_name: str) -> None:
        """Move images of the open dataset into another class folder (journalled, undoable)."""
        if not self._refused_while_running("move images"):  # one edit at a time: data_edits refuses a second
            self.data_edits.relabel(self.dataset.folder, paths, class_name)

    def exclude_images(self, paths: list[str]) -> None:
        """Set images of the open dataset aside in its _excluded folder (journalled, undoable)."""
        if not self._refused_while_running("exclude images"):
            self.data_edits.exclude(self.dataset.folder, paths)

    def _refused_while_editing_files(self) -> bool:
        if self.data_edits.busy:
            self.notice.emit(DATA_EDIT_BUSY)
            return True
        return False

    @Slot(str, object)
    def _on_data_edited(self, root: str, action) -> None:
        """The files moved: the views follow them, and the class table is listed again from the folder."""
        self.notice.emit(action.describe())
        self.data_edited.emit(root, action)
        if root == self.dataset.folder:
            self.datasets.open(root, self._split_settings())

    def _configuration_edited(self) -> None:
        """What follows any edit: whether the advice still holds, and the planned LRs."""
        self.advice_applied_changed.emit(self.advice_applied())
        self._schedule_timer.start()

    # --- advice ------------------------------------------------------------------------------------

    @property
    def advice(self) -> Advice | None:
        return self._advice

    def _request_advice(self) -> None:
        """Advice for the shown dataset and model, soon (a burst of changes asks once)."""
        if self.dataset.scan is not None:
            self.advice_pending.emit()
            self._advice_timer.start()

    def _advise(self) -> None:
        """The advice, worked out off the GUI thread."""
        scan = self.dataset.scan
        if scan is None:
            return
        folder, arch, weights, size = self.dataset.folder, self._model.arch, self._model.weights, self._data.image_size
        # Measuring builds a real model, which draws from torch's global RNG: never beside a run.
        measure = _pretrained_weights_at_hand(arch, weights) and not self._run.running
        self._advice = None
        stop_early = self.tasks.obsolete("advice")

        def job():
            if measure:  # the backbone's real weights, over the images
                return advise(scan, arch, weights, image_size=size, should_stop=stop_early)
            return without_random_draws(lambda: advise(scan, arch, weights, image_size=size, measure=False))

        self.tasks.submit("advice", job, lambda advice: self._on_advice(folder, advice), self.advice_failed.emit)

    def _on_advice(self, folder: str, advice: Advice) -> None:
        self._advice = advice
        first = folder not in self._advised_folders
        self._advised_folders.add(folder)
        # A dataset opened for the first time, and no plan of the person's to keep: follow the advice, undoably.
        if first and not self._plan_edited and not self._run.running and not self.advice_applied():
            self.apply_advice(advice)
            self.notice.emit(ADVICE_FOLLOWED)
            self.advice_followed.emit(ADVICE_FOLLOWED)
        self.advice_ready.emit(advice, self.advice_applied())

    def advice_applied(self) -> bool:
        """The configuration is the advice's: its plan, and the augmentation or epochs it names."""
        advice = self._advice
        if advice is None:
            return False
        data, train = advice_changes(advice)
        return (self._plan == advice.plan and all(getattr(self._data, k) == v for k, v in data.items())
                and all(getattr(self._train, k) == v for k, v in train.items()))

    @Slot(object)
    def apply_advice(self, advice: Advice) -> None:
        """The advice's plan, with its augmentation or epochs, as one undoable change."""
        if self.advice_applied() or self._refused_while_running("apply the advice"):
            return
        data, train = advice_changes(advice)
        before = ({k: getattr(self._data, k) for k in data}, {k: getattr(self._train, k) for k in train})
        self.plan_history.push(PlanChange(self._put, f"Apply the advice ({advice.strategy})",
                                          (self._plan, advice.plan), (before[0], data), (before[1], train)))

    # --- the planned schedule ------------------------------------------------------------------------

    def _preview_schedule(self) -> None:
        """Every group's planned LR per epoch, by the trainer's own code, off the GUI thread."""
        scan, info = self.dataset.scan, self.model_info
        if self._run.running or scan is None or info is None:
            return
        config = self.config()
        arch, classes = config.model.arch, info.num_classes
        size = config.data.image_size if size_shapes_parameters(arch) else 224
        steps = batches_per_epoch(len(scan.train), config.train.batch_size)

        def job():
            built = model_structure(arch, classes, size)  # a model of its own: the preview sets its flags
            plan = build_plan(config.plan, built.info)
            return schedule_preview(built.model, built.info, plan, config.train, steps)

        self.tasks.submit("schedule", job, self.schedule_previewed.emit, lambda _: self.schedule_previewed.emit([]))

    # --- a past run's plan, shown read-only ------------------------------------------------------------

    def preview_run(self, path: str) -> None:
        """A past run's ModelInfo and plan for the layer tree, built off the GUI thread."""
        def job():
            folder = RunFolder(path)
            config = folder.load_config()
            classes = max(2, len(folder.read_record().get("class_names") or ()))
            arch = config.model.arch
            info = model_structure(arch, classes, config.data.image_size if size_shapes_parameters(arch) else 224).info
            build_plan(config.plan, info)  # a plan that does not fit its model is refused here, not in the tree
            return info, config.plan

        self.tasks.submit("run-preview", job, lambda built: self.run_preview_ready.emit(path, *built),
                          self.notice.emit)

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
        self.plan_history.clear()  # another configuration: undo does not reach into the one before
        self._plan_edited = True  # a project's or run's plan is the person's: advice never replaces it by itself
        self._emit_configuration(config)
        self._forget_run_of_another_configuration()
        dataset = self.dataset
        if self._data.root and (self._data.root != dataset.folder or dataset.error):
            self._open_dataset(self._data.root)
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
            self._plan_edited = False  # the window's defaults: a first dataset's advice may replace them
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
            self._schedule_timer.start()

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
        if self.suspect_finder.searching:
            self.error_raised.emit(SEARCHING)
            return False
        if not run.can_continue:
            self.error_raised.emit("No run to continue: a run saves its state after each completed epoch.")
            return False
        try:
            saved = run.folder.load_config()
        except UserError as exc:
            self.error_raised.emit(str(exc))
            return False
        # the Epochs box and the device choice apply; a run continues with any number of processes
        config = replace(saved, train=replace(saved.train, epochs=self._train.epochs, processes=self._train.processes))
        if not self.apply_config(replace(config, out_dir="")):
            return False
        self._launch(replace(config, out_dir=str(run.folder.path)), run.folder, resume=True)
        return True

    def _launch(self, config: RunConfig, folder: RunFolder, resume: bool) -> None:
        self._pending_folder = folder
        self._set_run(RunState(folder=folder if resume else None, config=config, running=True))
        self.controller.start(config, resume=resume, scan=None if resume else self._scan_for(config),
                              processes=config.train.processes)

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
        self._schedule_timer.stop()
        self.tasks.shutdown()


