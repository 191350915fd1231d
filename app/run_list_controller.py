"""The Runs tab's controller: the selected runs' insight, curves, plan and comparison (read by
app.insight_session and app.preview_controller off the GUI thread), and Continue, Export, Use this
configuration, Rename and Delete on a listed run. A run that trains keeps the curves and the tree: a past
run's are never shown over it. A past run's plan is a preview: opening another dataset or editing the
configuration ends it, and another dataset drops the insight of a run of the one before."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QFile, QObject, Signal, Slot

from app.insight_session import InsightSession
from app.preview_controller import PreviewController
from app.runs_controller import RunsController
from app.session_state import Configuration, Messages, RunState, ShownRun
from engine.config import DataConfig
from engine.runs.run_folder import RunFolder


class RunListController(QObject):
    preview_ended = Signal()  # no single past run is selected: the tree shows the plan to edit again
    plan_previewed = Signal(str, object, object)  # the selected run's name, its ModelInfo and PlanConfig
    history_ready = Signal(list)  # the selected run's curves, [(BatchEvent, EpochEvent)]
    export_wanted = Signal()  # the listed run is the shown run now: its Export dialog is wanted
    deletion_unconfirmed = Signal(str, str)  # no trash here: removing this run folder (its name) for good needs a yes
    renamed = Signal(str, str)  # a run folder, the name it was given ("" for none): the list shows it
    preview_renamed = Signal(str)  # the previewed run's new name, for the tree's banner
    insight_renamed = Signal(str)  # the new name of the run whose insight is shown

    def __init__(self, configuration: Configuration, shown_run: ShownRun, messages: Messages, runs: RunsController,
                 previews: PreviewController, insight: InsightSession, parent=None):
        super().__init__(parent)
        self._shown_run, self._messages, self._runs = shown_run, messages, runs
        self._previews, self._insight = previews, insight
        self._selected: list[str] = []  # as the Runs tab last said
        self._names: dict[str, str] = {}  # run folder -> what the run is called, as last listed or renamed
        self._dataset_root = configuration.data.root  # the dataset whose runs' insight may be shown
        insight.history_ready.connect(self._on_history)
        insight.run_deleted.connect(self._on_run_deleted)
        insight.runs_listed.connect(self._on_runs_listed)
        insight.run_renamed.connect(self._on_run_renamed)
        previews.run_preview_ready.connect(self._on_run_preview)
        shown_run.changed.connect(self._on_run_changed)
        runs.controller.run_started.connect(self._on_run_started)
        runs.resumed.connect(self.history_ready)  # a continued run's earlier epochs, before its new ones
        configuration.data_changed.connect(self._on_data_changed)
        for edited in (configuration.model_changed, configuration.train_changed):
            edited.connect(self.end_preview)

    @Slot(list)
    def select(self, paths: list) -> None:
        self._selected = list(paths)
        running = self._shown_run.running
        if len(paths) != 1 or running:
            self.preview_ended.emit()
        if len(paths) == 1:
            folder = RunFolder(paths[0])
            self._insight.open_insight(folder)
            if not running:  # live curves are never replaced by a past run's
                self._insight.load_history(folder)
                self._previews.preview_run(str(folder.path))  # its plan, read-only, in the tree
        if len(paths) >= 2:
            self._insight.compare(paths)

    @Slot()
    def end_preview(self) -> None:
        """The configuration was edited (or is another one): the tree shows the plan to edit again,
        and a past run's plan still being built is not shown when it comes."""
        self._selected = []
        self.preview_ended.emit()

    @Slot(object)
    def _on_data_changed(self, data: DataConfig) -> None:
        self.end_preview()
        if data.root != self._dataset_root:  # another dataset: a run of the one before is not its insight
            self._dataset_root = data.root
            self._insight.forget_shown()

    @Slot(str, list)
    def _on_history(self, path: str, events: list) -> None:
        if not self._shown_run.running and path in self._selected:
            self.history_ready.emit(events)

    @Slot(str, object, object)
    def _on_run_preview(self, path: str, info, plan) -> None:
        if not self._shown_run.running and self._selected == [path]:  # else the selection moved on meanwhile
            self.plan_previewed.emit(self._name(path), info, plan)

    @Slot(object)
    def _on_run_changed(self, run: RunState) -> None:
        if not run.running and run.folder is not None and run.folder.exists():  # ended or opened: its insight
            self._insight.open_insight(run.folder)
            self._insight.refresh_runs()

    @Slot(object)
    def _on_run_started(self, _event) -> None:
        self._insight.refresh_runs()

    def _open(self, path: str, then: Callable[[], None]) -> None:
        """Make a listed run the shown run (its configuration shown), then do `then()`: its action."""
        if self._shown_run.running:
            self._messages.notice.emit("A run is in progress: stop it first.")
            return
        shown = self._shown_run.state.folder
        if shown is not None and shown.path == Path(path):
            then()
        elif not self._runs.open_run(RunFolder(path), then):
            self._messages.error_raised.emit(f"{self._name(path)} cannot be opened: its run.json or its dataset "
                                             f"folder cannot be read.")

    @Slot(str)
    def continue_run_of(self, path: str) -> None:
        self._open(path, self._runs.continue_run)

    @Slot(str)
    def export_run_of(self, path: str) -> None:
        self._open(path, self.export_wanted.emit)

    @Slot(str)
    def use_configuration_of(self, path: str) -> None:
        self.preview_ended.emit()
        self._open(path, lambda: self._messages.notice.emit(f"The configuration of {self._name(path)} is shown: "
                                                            f"edit it and Start."))

    @Slot(str)
    def delete(self, path: str) -> None:
        """To the system trash when there is one; else, once the person confirms, removed for good."""
        running = self._shown_run.state.folder
        if self._shown_run.running and running is not None and running.path == Path(path):
            self._messages.notice.emit("That run is training: stop it first.")
            return
        if QFile.moveToTrash(path):
            self._messages.notice.emit(f"Moved {self._name(path)} to the trash.")
            self._on_run_deleted(path)
            self._insight.refresh_runs()
            return
        self.deletion_unconfirmed.emit(path, self._name(path))

    @Slot(str)
    def _on_run_deleted(self, path: str) -> None:
        """A deleted run is shown nowhere: not as the window's run (its Export), not in Insight."""
        self._runs.forget_run(path)
        self._insight.forget_run(path)
        if path in self._selected:
            self.end_preview()

    @Slot(str, str)
    def rename(self, path: str, typed: str) -> None:
        """Give a listed run a name (its folder keeps its own); refused while that run trains."""
        training = self._shown_run.state.folder
        if self._shown_run.running and training is not None and training.path == Path(path):
            self._messages.notice.emit("That run is training: rename it when it has ended.")
            return
        self._insight.rename_run(path, typed)  # a run training in another process is refused there

    @Slot(str, str)
    def _on_run_renamed(self, path: str, name: str) -> None:
        """Everywhere the run is named: the list, the status bar, the comparison, the banner, Insight."""
        self._names[path] = name or Path(path).name
        self._runs.rename_shown(path, name)
        self.renamed.emit(path, name)
        self._insight.refresh_runs()  # a listing read before the rename must not bring the old name back
        if len(self._selected) >= 2 and path in self._selected:
            self._insight.compare(self._selected)  # the legend and the columns name it
        if self._selected == [path]:
            self.preview_renamed.emit(self._names[path])
        if self._insight.shown is not None and self._insight.shown.path == Path(path):
            self.insight_renamed.emit(self._names[path])

    @Slot(list)
    def _on_runs_listed(self, runs: list) -> None:
        self._names = {str(run.path): run.name for run in runs}

    def _name(self, path: str) -> str:
        return self._names.get(path) or Path(path).name

    @Slot(str)
    def delete_for_good(self, path: str) -> None:
        self._insight.delete_run(path)
