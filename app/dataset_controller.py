"""The dataset: which folder is open, its listing and its split (listed and split off the GUI thread
by session_tasks.DatasetLoader), listed again when the window moved its files."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QObject, Signal, Slot

from app.data_edit_session import DataEdits
from app.session_state import Configuration, Messages, ShownRun
from app.session_tasks import DatasetLoader, DatasetState
from app.worker import BackgroundTasks
from engine.config import RunConfig
from engine.data.dataset import DatasetScan

NO_FOLDER = "No dataset given: type a folder or a labels CSV, or use Browse… or the demo dataset."


class DatasetController(QObject):
    changed = Signal(object)  # DatasetState
    thumbnails_ready = Signal(object)  # {class name: QImage strip}

    def __init__(self, tasks: BackgroundTasks, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 data_edits: DataEdits, parent=None):
        super().__init__(parent)
        self._configuration, self._shown_run, self._messages = configuration, shown_run, messages
        self._data_edits = data_edits
        self._loader = DatasetLoader(tasks, self)
        self._loader.changed.connect(self.changed)
        self._loader.thumbnails_ready.connect(self.thumbnails_ready)
        data_edits.edited.connect(self._on_files_moved)

    @property
    def state(self) -> DatasetState:
        return self._loader.state

    def announce(self) -> None:
        self.changed.emit(self.state)

    def problem(self) -> str:
        """Why the dataset cannot train yet, in one line; "" when it can."""
        state = self.state
        if not state.folder:
            return "Choose a dataset folder first (or a labels CSV, or the demo dataset)."
        if state.error:
            return f"The dataset cannot be used: {state.error}"
        if state.scan is None:
            return f"Still reading {state.folder}…"
        return ""

    def classes(self) -> int:
        """The model's output count: the classes (at least 2), the labels of multi-label data, or
        regression's one value (2 until the data is listed)."""
        listing = self.state.listing
        if listing is None:
            return 2
        return max(2 if listing.task == "single-label" else 1, len(listing.class_names))

    def scan_for(self, config: RunConfig) -> DatasetScan | None:
        """The split shown, when it is the one `config` asks for (else None: read the folder again); a run
        given it need not list the folder again (a second or more for thousands of images)."""
        state = self.state
        if state.folder == config.data.root and state.split == (config.data.val_fraction, config.train.seed) \
                and state.scan is not None and config.data.task in ("auto", state.scan.task):
            return state.scan
        return None

    @Slot(str)
    def open_folder(self, folder: str) -> None:
        if not folder:  # said instead of a line about another folder or an earlier attempt
            self._messages.error_raised.emit(NO_FOLDER)
            return
        if self._shown_run.refused("open another dataset"):
            return
        self._messages.error_raised.emit("")  # the last error was about what was open before
        self._configuration.set_data(replace(self._configuration.data, root=folder))
        self.open(folder)

    @Slot()
    def open_demo(self) -> None:
        if not self._shown_run.refused("open another dataset"):
            self._loader.open_demo(self.open_folder)

    def open(self, folder: str) -> None:
        """List the folder, after a look at its journal of edits (an edit a crash left half-done is noted)."""
        self._data_edits.check_journal(folder, lambda: self._loader.open(folder, self._configuration.split_settings(),
                                                                         self._configuration.data.task))

    def read_again(self) -> None:
        """The task changed: the data is listed again (what a CSV's rows give depends on it)."""
        if self.state.folder:
            self.open(self.state.folder)

    def split_again(self) -> None:
        """The validation share or the seed changed: split the listing again (a burst makes one split)."""
        self._loader.split(self._configuration.split_settings())

    @Slot(str, object)
    def _on_files_moved(self, root: str, action) -> None:
        if root == self.state.folder:  # the class table is listed again from the folder
            self._loader.open(root, self._configuration.split_settings(), self._configuration.data.task)

    def stop(self) -> None:
        self._loader.stop()
