"""Mending the data, the Insight and Suspects tabs' controller: moves and exclusions of the open
dataset's images (app.data_edit_session.DataEdits, journalled and undoable) and the suspects search
(SuspectFinder), never beside a run."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from app.data_edit_session import DataEdits, SuspectFinder
from app.dataset_controller import DatasetController
from app.session_state import Configuration, Messages, ShownRun
from app.worker import BackgroundTasks


class MendingController(QObject):
    files_moved = Signal(str, list)  # the dataset folder, [(old relative path, new relative path)]
    search_started = Signal(str)  # what is being searched, in one line
    search_refused = Signal(str)  # why no search starts now

    def __init__(self, tasks: BackgroundTasks, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 datasets: DatasetController, data_edits: DataEdits, parent=None):
        super().__init__(parent)
        self._configuration, self._shown_run, self._messages = configuration, shown_run, messages
        self._datasets, self._data_edits = datasets, data_edits
        # Its model would draw from the random numbers a run is seeded with: one never runs beside a run.
        self.suspect_finder = SuspectFinder(tasks, self)
        # The search's progress goes where its start was said: the Suspects tab's busy line.
        self.suspect_finder.progressed.connect(self.search_started)
        data_edits.edited.connect(self._on_edited)
        data_edits.noted.connect(messages.notice)
        data_edits.failed.connect(messages.notice)

    @Slot(list, str)
    def relabel_images(self, paths: list[str], class_name: str) -> None:
        """Move images of the open dataset into another class folder (journalled, undoable)."""
        if not self._shown_run.refused("move images"):  # one edit at a time: DataEdits refuses a second
            self._data_edits.relabel(self._datasets.state.folder, paths, class_name)

    @Slot(list)
    def exclude_images(self, paths: list[str]) -> None:
        """Set images of the open dataset aside in its _excluded folder (journalled, undoable)."""
        if not self._shown_run.refused("exclude images"):
            self._data_edits.exclude(self._datasets.state.folder, paths)

    @Slot(str, object)
    def _on_edited(self, root: str, action) -> None:
        """The files moved: the views follow them (the dataset controller lists the folder again)."""
        self._messages.notice.emit(action.describe())
        self.files_moved.emit(root, [tuple(move) for move in action.moves])

    @Slot()
    def find_suspects(self) -> None:
        """Rank the open dataset's images with the model shown (the shown run's predictions when its
        trunk gives no usable features), in the background."""
        if self._shown_run.running:  # a model built beside a run would draw from the random numbers it was seeded with
            self.search_refused.emit("A run is in progress: find suspects when it has ended.")
            return
        scan = self._datasets.state.scan
        if scan is not None and scan.task != "single-label":  # out-of-fold softmax ranks one class per image
            self.search_refused.emit(f"Suspects are for single-label data (class folders); this dataset is {scan.task}.")
            return
        folder, run = self._datasets.state.folder, self._shown_run.state.folder
        self.search_started.emit(f"Finding suspects in {Path(folder).name or 'the dataset'}…")
        self.suspect_finder.find(self._configuration.draft(), folder, str(run.path) if run is not None else None)
