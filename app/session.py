"""The window's model: one configuration, one shown run, and a controller per job over them.

Panels do not read one another. They show what the session's parts tell them (their signals) and
hand them what the person edits (their methods); the main window only wires the two. Each piece of
state has one owner:

- configuration  the draft being edited (app.session_state.Configuration)
- shown_run      the run the window shows; while it runs every edit is refused (ShownRun)
- messages       the lines said to the person, from any job (Messages)
- datasets       the dataset folder, its listing and split (app.dataset_controller)
- plan           presets, LRs, tree edits and their undo history (app.plan_controller)
- advisor        advice for the dataset and model (app.advice_controller)
- settings       data, model and training settings, whole configurations (app.settings_controller)
- previews       the planned LRs, a past run's plan (app.preview_controller)
- mending        moves of the dataset's images, the suspects search (app.mending_controller)
- runs           start, continue, pause, stop, a past run opened again (app.runs_controller)
- run_list       the Runs tab: the selected runs, actions on a listed run (app.run_list_controller)
- exports        export of the shown run's checkpoint (app.export_controller)
- search         the Search dialog's hyper-parameter search and its Use best (app.search_controller)
- insight        the Insight and Runs tabs' files and models (app.insight_session)
- closing        a close while a run trains: the run stopped first, the window painted (app.run_closer)

Everything slow runs as background tasks or in the training thread; results come back as signals.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject
from PySide6.QtGui import QUndoStack

from app.advice_controller import AdviceController
from app.data_edit_session import DataEdits
from app.dataset_controller import DatasetController
from app.export_controller import ExportController
from app.insight_session import InsightSession
from app.mending_controller import MendingController
from app.plan_controller import PlanController
from app.preview_controller import PreviewController
from app.run_closer import RunCloser
from app.run_list_controller import RunListController
from app.runs_controller import RunsController
from app.search_controller import SearchController
from app.session_state import Configuration, Messages, RunState, ShownRun
from app.session_tasks import DatasetState
from app.settings_controller import SettingsController
from app.worker import BackgroundTasks
from engine.config import RunConfig, save_project
from engine.data.dataset import start_worker_server
from engine.errors import UserError
from engine.model.architectures import ModelInfo
from engine.model.project import load_project


class Session(QObject):
    def __init__(self, runs_root: Path, parent=None):
        super().__init__(parent)
        self.runs_root = Path(runs_root)
        self.tasks = BackgroundTasks(self)
        self.messages = Messages(self)
        self.configuration = Configuration(self)
        self.shown_run = ShownRun(self.messages, self)
        # Plan changes, presets, applied advice and moves of the dataset's files share one history:
        # Ctrl+Z takes back the last thing done, whichever it was.
        self.history = QUndoStack(self)
        self.data_edits = DataEdits(self.tasks, self.history, self)
        shared = (self.configuration, self.shown_run, self.messages)
        self.datasets = DatasetController(self.tasks, *shared, self.data_edits, self)
        self.plan = PlanController(*shared, self.history, self.data_edits, self)
        self.advisor = AdviceController(self.tasks, *shared, self.datasets, self.plan, self)
        self.settings = SettingsController(self.tasks, *shared, self.datasets, self.plan, self.advisor, self)
        self.previews = PreviewController(self.tasks, *shared, self.datasets, self.settings, self)
        self.mending = MendingController(self.tasks, *shared, self.datasets, self.data_edits, self)
        self.runs = RunsController(self.runs_root, *shared, self.datasets, self.settings, self.data_edits,
                                   self.mending.suspect_finder, self)
        self.insight = InsightSession(self.tasks, self.runs_root, self)
        self.run_list = RunListController(self.configuration, self.shown_run, self.messages, self.runs, self.previews,
                                          self.insight, self)
        self.exports = ExportController(self.shown_run, self.messages, self)
        self.search = SearchController(self.runs_root, *shared, self.datasets, self.settings, self.plan, self)
        self.closing = RunCloser(self.runs.controller, self.tasks, self)
        for edits in (self.settings, self.plan):  # after any edit: does the advice still hold, what LRs are planned
            edits.edited.connect(self.advisor.recheck)
            edits.edited.connect(self.previews.schedule_soon)
        self.plan.edited.connect(self.run_list.end_preview)  # an edited plan is the one the tree shows
        self.runs.continued.connect(self.previews.preview_resumed)  # the LRs the continued run follows
        # Loader workers in this process start from a forkserver (issue 28): start it now, off the GUI
        # thread, so a run's first loader does not wait seconds for the server's imports.
        self.tasks.submit("worker-server", start_worker_server, lambda method: None, lambda message: None)

    def announce(self) -> None:
        """Say the whole state once, so views connected just now show it (the controllers listening
        too find nothing new in it)."""
        self.configuration.announce()
        self.settings.announce()
        self.datasets.announce()
        self.shown_run.announce()

    # --- what panels ask ----------------------------------------------------------------------------

    def config(self) -> RunConfig:
        """The configuration the window shows: the draft, or the run's while one is in progress."""
        run = self.shown_run.state
        if run.running and run.config is not None:
            return replace(run.config, out_dir="")
        return self.configuration.draft()

    @property
    def dataset(self) -> DatasetState:
        return self.datasets.state

    @property
    def model_info(self) -> ModelInfo | None:
        return self.settings.model_info

    @property
    def run(self) -> RunState:
        return self.shown_run.state

    @property
    def is_running(self) -> bool:
        return self.shown_run.running

    @property
    def is_ready(self) -> bool:
        """A dataset is split and its model's layer tree is built: Start can run."""
        return self.dataset.scan is not None and self.model_info is not None

    # --- project files ------------------------------------------------------------------------------

    def save_project(self, path: str) -> None:
        """Save the configuration as shown (during a run: the run's)."""
        save_project(path, self.config())

    def open_project(self, path: str, then: Callable[[], None] = lambda: None) -> None:
        """Show the project's configuration, then call `then()`; when it cannot be shown, why goes to
        error_raised (at once, or once its layer edits were checked in the background)."""
        try:
            config = load_project(path)
        except UserError as exc:
            self.messages.error_raised.emit(str(exc))
            return

        def shown() -> None:
            self.messages.error_raised.emit("")  # an earlier error (a bad project) no longer holds
            then()

        self.settings.apply_config(config, shown)

    def shutdown(self) -> None:
        """The window closes: stop the run and the export, drop background results."""
        self.runs.shutdown()
        self.search.shutdown()
        self.exports.shutdown()
        self.datasets.stop()
        self.previews.stop()
        self.tasks.shutdown()
