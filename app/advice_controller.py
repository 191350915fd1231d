"""Advice for the shown dataset and model (engine.insight.advisor), worked out off the GUI thread; a
dataset opened for the first time, with no plan of the person's to keep, follows it undoably."""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.dataset_controller import DatasetController
from app.plan_controller import PlanController
from app.plan_history import advice_changes
from app.session_state import Configuration, Messages, ShownRun
from app.session_tasks import DatasetState, structure_info, structure_size
from app.worker import BackgroundTasks
from engine.insight.advisor import Advice, advise
from engine.model.architectures import weights_cache_path

# Advice waits until the window has laid out and painted what changed: a model built on a background
# thread meanwhile takes the GIL from the painting GUI thread (a first paint of 50 ms instead of 25).
ADVICE_DELAY_MS = 250
ADVICE_FOLLOWED = "Presets follow the advice (Ctrl+Z undoes)"


def _pretrained_weights_at_hand(arch: str, weights: str) -> bool:
    """Measuring the backbone needs its weights without a download: a file, or cached ImageNet ones."""
    if weights == "none":
        return False  # random features measure nothing the table does not already say
    if weights != "imagenet":
        return True
    path = weights_cache_path(arch)
    return path is not None and path.exists()


class AdviceController(QObject):
    pending = Signal()  # the dataset or model changed: advice is being worked out
    ready = Signal(object, bool)  # Advice, whether the configuration is already the advice's
    failed = Signal(str)
    applied_changed = Signal(bool)  # after any edit: is the configuration still the advice's
    followed = Signal(str)  # a first dataset's presets followed the advice: the line that says so

    def __init__(self, tasks: BackgroundTasks, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 datasets: DatasetController, plan: PlanController, parent=None):
        super().__init__(parent)
        self._tasks, self._configuration, self._shown_run, self._messages = tasks, configuration, shown_run, messages
        self._datasets, self._plan = datasets, plan
        self._advice: Advice | None = None
        self._advised_folders: set[str] = set()  # datasets advice was given for: only a first one is followed
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(ADVICE_DELAY_MS)
        self._timer.timeout.connect(self._advise)
        datasets.changed.connect(self._on_dataset_changed)

    @property
    def advice(self) -> Advice | None:
        return self._advice

    def request(self) -> None:
        """Advice for the shown dataset and model, soon (a burst of changes asks once)."""
        if self._datasets.state.scan is not None:
            self.pending.emit()
            self._timer.start()

    @Slot(object)
    def _on_dataset_changed(self, state: DatasetState) -> None:
        if state.scan is not None:
            self.request()
        elif state.error or state.listing_in_progress:  # the last advice was for another dataset
            self._advice = None
            self._tasks.cancel("advice")
            if state.error:
                self.failed.emit("No advice: the dataset folder cannot be used.")
            else:
                self.pending.emit()

    def _advise(self) -> None:
        """The advice, worked out off the GUI thread."""
        dataset, model = self._datasets.state, self._configuration.model
        scan = dataset.scan
        if scan is None:
            return
        if scan.task != "single-label":  # as `transfer-studio advise`: the probes and the guide's table count classes
            self._advice = None
            self.failed.emit(f"No advice for {scan.task} data: the advisor measures single-label data. "
                             f"Help ▸ Which strategy? still applies (by the number of images).")
            return
        folder, arch, weights, size = dataset.folder, model.arch, model.weights, self._configuration.data.image_size
        # Measuring builds a real model, which draws from torch's global RNG: never beside a run.
        measure = _pretrained_weights_at_hand(arch, weights) and not self._shown_run.running
        self._advice = None
        stop_early = self._tasks.obsolete("advice")

        def job():
            if measure:  # the backbone's real weights, over the images
                return advise(scan, arch, weights, image_size=size, should_stop=stop_early)
            # The layer tree's structure: built once for both (without drawing from torch's RNG).
            info = structure_info(arch, self._datasets.classes(), structure_size(arch, size))
            return advise(scan, arch, weights, image_size=size, measure=False, info=info)

        self._tasks.submit("advice", job, lambda advice: self._on_advice(folder, advice), self.failed.emit)

    def _on_advice(self, folder: str, advice: Advice) -> None:
        self._advice = advice
        first = folder not in self._advised_folders
        self._advised_folders.add(folder)
        # A dataset opened for the first time, and no plan of the person's to keep: follow the advice, undoably.
        if first and not self._plan.is_persons and not self._shown_run.running and not self.applied():
            self.apply(advice)
            self._messages.notice.emit(ADVICE_FOLLOWED)
            self.followed.emit(ADVICE_FOLLOWED)
        self.ready.emit(advice, self.applied())

    def applied(self) -> bool:
        """The configuration is the advice's: its plan, and the augmentation or epochs it names."""
        advice, configuration = self._advice, self._configuration
        if advice is None:
            return False
        data, train = advice_changes(advice)
        return (configuration.plan == advice.plan and all(getattr(configuration.data, k) == v for k, v in data.items())
                and all(getattr(configuration.train, k) == v for k, v in train.items()))

    @Slot()
    def recheck(self) -> None:
        """After an edit: say whether the configuration is still the advice's."""
        self.applied_changed.emit(self.applied())

    @Slot(object)
    def apply(self, advice: Advice) -> None:
        """The advice's plan, with its augmentation or epochs, as one undoable change."""
        if self.applied() or self._shown_run.refused("apply the advice"):
            return
        data, train = advice_changes(advice)
        self._plan.change_with_settings(f"Apply the advice ({advice.strategy})", advice.plan, data, train)
