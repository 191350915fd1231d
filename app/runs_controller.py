"""The run: Start, Continue, Pause and Stop on app.worker's TrainingController (a thread of its own,
or processes), and a past run opened again (the latest after a restart). It is the only one that
changes the run the window shows (ShownRun): a run's result, plots, folder and checkpoint belong to
its dataset and model, so another dataset or model forgets them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.data_edit_session import DataEdits, SuspectFinder
from app.dataset_controller import DatasetController
from app.insight_session import history_events
from app.run_events import RunFailure
from app.session_state import Configuration, Messages, RunState, ShownRun
from app.settings_controller import SettingsController
from app.worker import TrainingController
from engine.config import RunConfig
from engine.errors import UserError
from engine.events import FitResult, RunStarted
from engine.runs.run_folder import RunFolder, list_runs

SEARCHING = "Suspects are being found: start when that is done (or Stop it)."
CHANCE_MARGIN = 0.05  # a best val accuracy this close to 1/K (or below) is no better than guessing


def chance_warning(best_val_accuracy: float | None, classes: int) -> str:
    """One line when a run's best val accuracy is at chance level for `classes` classes, else ""."""
    if best_val_accuracy is None or classes < 2:
        return ""
    chance = 1 / classes
    if best_val_accuracy > chance + CHANCE_MARGIN:
        return ""
    return (f"Best val accuracy {best_val_accuracy:.1%} is chance level for {classes} classes ({chance:.1%}): "
            f"the model learned nothing usable. Check the labels, the weights and the LR (LR finder).")


class RunsController(QObject):
    start_asked = Signal()  # Start or Continue: the views drop a past run's plan and the last error
    launched = Signal()  # a run began: its curves, evidence and progress start empty
    resumed = Signal(list)  # a continued run's earlier epochs, [(BatchEvent, EpochEvent)], after launched
    continued = Signal(object, int, int)  # a continued run's config, its epochs done, the epochs it had planned
    stopping = Signal()  # Stop was asked for: the run ends after this batch

    def __init__(self, runs_root: Path, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 datasets: DatasetController, settings: SettingsController, data_edits: DataEdits,
                 suspect_finder: SuspectFinder, parent=None):
        super().__init__(parent)
        self.runs_root = Path(runs_root)
        self._configuration, self._shown_run, self._messages = configuration, shown_run, messages
        self._datasets, self._settings = datasets, settings
        self._data_edits, self._suspect_finder = data_edits, suspect_finder
        self.controller = TrainingController(self)
        self._pending_folder: RunFolder | None = None  # a started run's folder, until the engine makes it
        self._classes = 0  # the running run's class count, for its chance level
        self.controller.run_started.connect(self._on_run_started)
        self.controller.run_finished.connect(self._on_run_finished)
        self.controller.run_failed.connect(self._on_run_failed)
        configuration.data_changed.connect(self._forget_run_of_another_configuration)
        configuration.model_changed.connect(self._forget_run_of_another_configuration)

    def start_problem(self) -> str:
        """Why Start cannot run now, in one line; "" when it can."""
        if self._shown_run.running:
            return "A run is in progress."
        dataset_problem = self._datasets.problem()
        if dataset_problem:
            return dataset_problem
        if self._data_edits.busy:
            return "The dataset's files are being moved: start when that is done."
        if self._suspect_finder.searching:
            return SEARCHING
        return self._settings.problem()

    @Slot()
    def start(self) -> bool:
        if self._shown_run.running:
            return False
        self.start_asked.emit()
        problem = self.start_problem()
        if problem:
            self._messages.error_raised.emit(problem)
            return False
        folder = self._new_run_folder()
        config = replace(self._configuration.draft(), out_dir=str(folder.path))
        try:
            config.validate()
        except UserError as exc:
            self._messages.error_raised.emit(str(exc))
            return False
        self._launch(config, folder, resume=False)
        return True

    @Slot()
    def continue_run(self) -> bool:
        """Resume the shown run from its last completed epoch up to the Epochs setting."""
        run = self._shown_run.state
        if run.running:
            return False
        self.start_asked.emit()
        if self._refused_while_searching():
            return False
        if not run.can_continue:
            self._messages.error_raised.emit("No run to continue: a run saves its state after each completed epoch.")
            return False
        try:
            saved = run.folder.load_config()
        except UserError as exc:
            self._messages.error_raised.emit(str(exc))
            return False
        # the Epochs box and the device choice apply; a run continues with any number of processes
        train = self._configuration.train
        config = replace(saved, train=replace(saved.train, epochs=train.epochs, processes=train.processes))
        # Launched a turn of the event loop after the settings are shown: both in one piece held the window 60-80 ms.
        return self._settings.apply_config(replace(config, out_dir=""), lambda: QTimer.singleShot(
            0, self, lambda: self._resume(run.folder, config, saved.train.epochs)))

    def _resume(self, folder: RunFolder, config: RunConfig, planned_epochs: int) -> None:
        """The run's configuration is shown: it trains on from its last completed epoch."""
        if self._shown_run.state.running or self._refused_while_searching():  # started meanwhile
            return
        earlier = folder.read_epochs()  # a few lines: the curves go on from them, not from nothing
        self._launch(replace(config, out_dir=str(folder.path)), folder, resume=True)
        self.resumed.emit(history_events(earlier, config.train.epochs))
        self.continued.emit(config, len(earlier), planned_epochs)

    def _refused_while_searching(self) -> bool:
        if self._suspect_finder.searching:
            self._messages.error_raised.emit(SEARCHING)
        return self._suspect_finder.searching

    def _launch(self, config: RunConfig, folder: RunFolder, resume: bool) -> None:
        self._pending_folder = folder
        name = self._shown_run.state.name if resume else ""  # a continued run keeps the name it was given
        self._shown_run.set(RunState(folder=folder if resume else None, config=config, running=True, name=name))
        self.controller.start(config, resume=resume, scan=None if resume else self._datasets.scan_for(config),
                              processes=config.train.processes)
        self.launched.emit()

    def _new_run_folder(self) -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.runs_root / f"{self._configuration.model.arch}-{stamp}"
        path, n = base, 1
        while path.exists():  # two runs in one second must not share a folder
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return RunFolder(path)

    @Slot()
    def stop(self) -> None:
        if self._shown_run.running:
            self.controller.stop()
            self.stopping.emit()

    @Slot(bool)
    def set_paused(self, paused: bool) -> None:
        self.controller.set_paused(paused)

    @Slot()
    def toggle_pause(self) -> None:
        self.controller.set_paused(not self.controller.paused)

    @Slot(object)
    def _on_run_started(self, event: RunStarted) -> None:
        self._classes = len(event.class_names)
        self._shown_run.set(replace(self._shown_run.state, folder=RunFolder(event.run_dir)))

    @Slot(object)
    def _on_run_finished(self, result: FitResult) -> None:
        run = self._shown_run.state
        self._shown_run.set(replace(run, running=False, result=result, folder=RunFolder(result.run_dir)))
        warning = chance_warning(result.best_val_accuracy, self._classes)
        if warning:  # said beside "Finished …": a run at chance must not read as a success
            self._messages.error_raised.emit(warning)

    @Slot(object)
    def _on_run_failed(self, failure: RunFailure) -> None:
        run, pending = self._shown_run.state, self._pending_folder
        folder = pending if pending is not None and pending.exists() else None  # never created: not named
        if failure.kind == "weights-unavailable":
            self._settings.note_download_failed(run.config.model.arch)
        self._shown_run.set(replace(run, running=False, failure=failure, folder=folder))

    @Slot(object)
    def _forget_run_of_another_configuration(self, _changed=None) -> None:
        run, configuration = self._shown_run.state, self._configuration
        if run.running or run.config is None:
            return
        if run.config.data.root != configuration.data.root or run.config.model != configuration.model:
            self._shown_run.set(RunState())

    def forget_run(self, path: str) -> None:
        """The run folder at `path` was deleted: when it is the run shown (and not training), the
        window shows no run, so Export and Continue no longer offer it."""
        run = self._shown_run.state
        if not run.running and run.folder is not None and run.folder.path == Path(path):
            self._shown_run.set(RunState())

    def restore_latest_run(self) -> bool:
        """After a restart: show the newest run under the runs folder that completed an epoch (its
        configuration, folder and outcome), so Continue and Export work on it; a run stopped before
        its first epoch has no curves to show, so it is shown only when no run has any (its
        configuration is still the last one used). False when there is none to show."""
        runs = list_runs(self.runs_root)
        if any(run.read_epochs() and self.open_run(run) for run in runs):  # newest first: stops at the first
            return True
        return any(self.open_run(run) for run in runs)

    def open_run(self, run: RunFolder, then: Callable[[], None] = lambda: None) -> bool:
        """Show a past run (its configuration, folder and outcome), so Continue and Export work on
        it, then call `then()`. False, and nothing changed, when it cannot be shown (see
        SettingsController.apply_config: layer edits of another model are checked first, in the background)."""
        if self._shown_run.running:
            return False
        try:
            record = run.read_run()  # the outcome, when the run got that far, and its name
            config = run.load_config()
        except UserError:
            return False
        if not Path(config.data.root).expanduser().is_dir():
            return False

        def shown() -> None:
            self._shown_run.set(RunState(folder=run, config=config, result=record.result, name=record.name or ""))
            then()

        return self._settings.apply_config(replace(config, out_dir=""), shown)

    def rename_shown(self, path: str, name: str) -> None:
        """The run at `path` was given `name` ("" for none): when it is the run shown, so is its name."""
        folder = self._shown_run.state.folder
        if folder is not None and folder.path == Path(path):
            self._shown_run.rename(name)

    def shutdown(self) -> None:
        self.controller.stop_and_wait()
