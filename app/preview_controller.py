"""What a plan would do, shown before any training: the planned LR of every group per epoch for the
plan being edited, and a past run's plan in the layer tree, read-only. Both are worked out off the GUI
thread by the trainer's own code, on a model of their own."""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.dataset_controller import DatasetController
from app.session_state import Configuration, Messages, ShownRun
from app.session_tasks import DatasetState, model_structure, structure_info, structure_size
from app.settings_controller import SettingsController
from app.worker import BackgroundTasks
from engine.data.dataset import batches_per_epoch
from engine.plan.optimization import schedule_preview
from engine.plan.plan import build_plan
from engine.runs.run_folder import RunFolder

SCHEDULE_DELAY_MS = 250  # a burst of edits makes one schedule preview


class PreviewController(QObject):
    schedule_previewed = Signal(list)  # schedule_preview's entries for the shown plan ([] when none)
    run_preview_ready = Signal(str, object, object)  # a past run's folder, its ModelInfo and PlanConfig

    def __init__(self, tasks: BackgroundTasks, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 datasets: DatasetController, settings: SettingsController, parent=None):
        super().__init__(parent)
        self._tasks, self._configuration, self._shown_run, self._messages = tasks, configuration, shown_run, messages
        self._datasets, self._settings = datasets, settings
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SCHEDULE_DELAY_MS)
        self._timer.timeout.connect(self._preview_schedule)
        datasets.changed.connect(self._on_dataset_changed)
        settings.model_info_changed.connect(self._on_model_info)

    @Slot()
    def schedule_soon(self) -> None:
        self._timer.start()

    @Slot(object)
    def _on_dataset_changed(self, state: DatasetState) -> None:
        if state.scan is not None:  # an epoch's steps follow the training split
            self._timer.start()

    @Slot(object)
    def _on_model_info(self, info) -> None:
        if info is not None:
            self._timer.start()

    def _preview_schedule(self) -> None:
        """Every group's planned LR per epoch, by the trainer's own code, off the GUI thread."""
        scan, info = self._datasets.state.scan, self._settings.model_info
        if self._shown_run.running or scan is None or info is None:
            return
        config = self._configuration.draft()
        arch, classes = config.model.arch, info.num_classes
        size = structure_size(arch, config.data.image_size)
        steps = batches_per_epoch(len(scan.train), config.train.batch_size)

        def job():
            built = model_structure(arch, classes, size)  # a model of its own: the preview sets its flags
            plan = build_plan(config.plan, built.info)
            return schedule_preview(built.model, built.info, plan, config.train, steps)

        self._tasks.submit("schedule", job, self.schedule_previewed.emit,
                           lambda _: self.schedule_previewed.emit([]))

    @Slot(object, int, int)
    def preview_resumed(self, config, done_epochs: int, planned_epochs: int) -> None:
        """The LRs a continued run follows (config: the run's, up to its new Epochs), after
        `done_epochs` of the `planned_epochs` it last planned: not a fresh schedule over all of them."""
        scan = self._datasets.state.scan
        if scan is None or self._datasets.state.folder != config.data.root:
            self.schedule_previewed.emit([])  # no plan rather than one the run does not follow
            return
        arch, classes = config.model.arch, self._datasets.classes()
        size = structure_size(arch, config.data.image_size)
        steps = batches_per_epoch(len(scan.train), config.train.batch_size)

        def job():
            built = model_structure(arch, classes, size)
            plan = build_plan(config.plan, built.info)
            return schedule_preview(built.model, built.info, plan, config.train, steps, (done_epochs, planned_epochs))

        self._timer.stop()  # a preview of the draft would replace the run's
        self._tasks.submit("schedule", job, self.schedule_previewed.emit,
                           lambda _: self.schedule_previewed.emit([]))

    def preview_run(self, path: str) -> None:
        """A past run's ModelInfo and plan for the layer tree, built off the GUI thread."""
        def job():
            folder = RunFolder(path)
            config = folder.load_config()
            classes = max(2, len(folder.read_run().class_names or ()))
            arch = config.model.arch
            info = structure_info(arch, classes, structure_size(arch, config.data.image_size))
            build_plan(config.plan, info)  # a plan that does not fit its model is refused here, not in the tree
            return info, config.plan

        self._tasks.submit("run-preview", job, lambda built: self.run_preview_ready.emit(path, *built),
                           self._messages.notice.emit)

    def stop(self) -> None:
        self._timer.stop()
