"""The window's side of mending the data: relabel, exclude, undo and redo of the dataset's files,
a look at the journal when a dataset is opened, and finding suspects, all off the GUI thread as
background tasks.

The files' journal (engine.curation.dataset_edits, in the dataset folder) is the record of what was done;
the window's undo stack only holds one DataEdit per action, whose undo()/redo() ask the journal to
undo or redo it. Edits run one at a time: a second asked for while one runs is refused, and the
look at the journal on opening a dataset waits for a running edit. Opening only reads: an edit a
crash left half-done is noted, and completed by the next edit (never by merely opening a folder).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from app.worker import BackgroundTasks
from engine.curation import dataset_edits
from engine.config import RunConfig
from engine.curation.dataset_edits import Action
from engine.errors import UserError
from widgets.gallery import submit_thumbnails

BUSY = "A change of the dataset's files is still being made: try again in a moment."


class DataEdit(QUndoCommand):
    """One journal action on the undo stack. Pushed after the action was done, so its first
    redo() (QUndoStack.push calls it) does nothing; later ones redo it through the journal."""

    def __init__(self, edits: DataEdits, root: str, action: Action):
        super().__init__(action_text(action))
        self._edits, self._root, self._action_id = edits, root, action.id
        self._pushed = False

    def redo(self) -> None:
        if self._pushed and not self._edits.putting_back:
            self._edits.run_journal(self._root, dataset_edits.redo, self._action_id)
        self._pushed = True

    def undo(self) -> None:
        if not self._edits.putting_back:
            self._edits.run_journal(self._root, dataset_edits.undo, self._action_id)


def action_text(action: Action) -> str:
    """The undo stack's name for an action (Edit ▸ Undo says it)."""
    n = len(action.moves)
    return f"Move {n} image(s) to {action.target}" if action.kind == "relabel" else f"Exclude {n} image(s)"


def journal_step(root: str, step: Callable[[str], Action], action_id: int) -> Action:
    """`step` (the journal's undo or redo) when what it would take back or do again is the action
    `action_id`; a UserError when the journal moved on without the window (the command line, another
    window), so the window's Undo never takes back someone else's action."""
    dataset_edits.repair(root)  # as undo and redo do first: the history read here is the one they act on
    undoable, redoable = dataset_edits.history(root)
    entries = undoable if step is dataset_edits.undo else redoable
    last = entries[-1] if entries else None
    original = None if last is None else (last.of if last.kind in ("undo", "redo") else last.id)
    if original != action_id:
        raise UserError(f"the edits of {Path(root).name} changed outside this window since; its journal is the "
                        f"record: see `transfer-studio undo {root}`")
    return step(root)


class JobsUnderWay:
    """How many jobs handed to the worker threads have not ended: counted up on the GUI thread when
    submitted, down on the worker thread when the job ends, since the result of a job replaced by a
    newer one of its kind never comes back to the GUI thread to say so."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0

    def __bool__(self) -> bool:
        return self._count > 0

    def counted(self, job: Callable[[], object]) -> Callable[[], object]:
        with self._lock:
            self._count += 1

        def run():
            try:
                return job()
            finally:
                with self._lock:
                    self._count -= 1
        return run


class DataEdits(QObject):
    """Moves of the dataset's files, journalled and undoable, done off the GUI thread."""

    edited = Signal(str, object)  # the dataset folder, the engine's Action (its moves relative to the folder)
    noted = Signal(str)  # one line: an edit a crash left half-done, which the next edit completes
    failed = Signal(str)  # one line

    def __init__(self, tasks: BackgroundTasks, history: QUndoStack, parent=None):
        super().__init__(parent)
        self.tasks, self.history = tasks, history
        # One journal job at a time, edit or look: the tasks have two worker threads, and a look beside
        # a move would list the dataset while its files are moving.
        self._journal_lock = threading.Lock()
        self._editing = False  # an edit, undo or redo asked for and not yet reported back (GUI thread only)
        self._looks = JobsUnderWay()
        self.putting_back = False  # the stack's index is being put back: its commands' undo()/redo() do nothing

    @property
    def busy(self) -> bool:
        """An edit, undo or redo, or a look at a journal, is asked for or under way."""
        return self._editing or bool(self._looks)

    def relabel(self, root: str, paths: list[str], class_name: str) -> None:
        self._run(lambda: dataset_edits.relabel(root, paths, class_name), lambda action: self._done(root, action))

    def exclude(self, root: str, paths: list[str]) -> None:
        self._run(lambda: dataset_edits.exclude(root, paths), lambda action: self._done(root, action))

    def run_journal(self, root: str, step: Callable[[str], Action], action_id: int) -> None:
        """Undo or redo the action `action_id` through the journal (the undo stack's commands call this).

        The stack moves its index once this returns, before the journal has done anything: when the
        step is refused or fails, the index is put back, so Edit ▸ Undo names what is really undoable."""
        before = self.history.index()  # QUndoStack's undo(), redo() and setIndex() call a command, then move
        after = before - 1 if step is dataset_edits.undo else before + 1
        self._run(lambda: journal_step(root, step, action_id), lambda action: self.edited.emit(root, action),
                  lambda: QTimer.singleShot(0, self, lambda: self._put_back(before, after)))

    def _put_back(self, before: int, after: int) -> None:
        if self.history.index() != after:
            return  # the stack moved on since (a change of the plan): left as it is
        self.putting_back = True
        try:
            self.history.setIndex(before)
        finally:
            self.putting_back = False

    def check_journal(self, root: str, then: Callable[[], None]) -> None:
        """Look at `root`'s journal (moving nothing), note an edit a crash left half-done, then call
        `then` (which lists the folder); a folder without a journal costs one look."""
        def done(actions: list[Action]) -> None:
            if actions:
                self.noted.emit(f"An edit of {Path(root).name} was left half-done by a crash ("
                                + "; ".join(f"{a.kind} #{a.id}" for a in actions)
                                + "); the next relabel, exclude, undo or redo completes it")
            then()

        def failed(message: str) -> None:
            self.failed.emit(f"Could not check {Path(root).name}'s journal of edits: {message}")
            then()

        job = self._looks.counted(self._locked(lambda: dataset_edits.pending(root) if Path(root).is_dir() else []))
        self.tasks.submit("data-journal", job, done, failed)

    def _run(self, job: Callable[[], Action], on_done: Callable[[Action], None],
             on_failed: Callable[[], None] = lambda: None) -> None:
        if self.busy:
            self.failed.emit(BUSY)
            on_failed()
            return
        self._editing = True

        def done(action: Action) -> None:
            self._editing = False
            on_done(action)

        def failed(message: str) -> None:
            self._editing = False
            self.failed.emit(message)
            on_failed()

        self.tasks.submit("data-edit", self._locked(job), done, failed)

    def _locked(self, job: Callable[[], object]) -> Callable[[], object]:
        def run():
            with self._journal_lock:
                return job()
        return run

    def _done(self, root: str, action: Action) -> None:
        self.history.push(DataEdit(self, root, action))
        self.edited.emit(root, action)


class SuspectFinder(QObject):
    """engine.curation.suspects.find_suspects for the shown configuration, off the GUI thread; Stop ends it
    between images."""

    found = Signal(object, str)  # SuspectReport, the dataset folder its paths are relative to
    failed = Signal(str)
    progressed = Signal(str)  # how far the search is, one line (emitted from the worker: queued to the GUI thread)
    thumbnails_ready = Signal(dict)

    def __init__(self, tasks: BackgroundTasks, parent=None):
        super().__init__(parent)
        self.tasks = tasks
        self._stop = threading.Event()
        self.searching = False  # a search asked for and not reported back yet: no run starts beside it

    def find(self, config: RunConfig, root: str, run_dir: str | None) -> None:
        from engine.curation.suspects import find_suspects

        if not root:
            self.failed.emit("Open a dataset first.")
            return
        self._stop = stop = threading.Event()  # a fresh flag per search: a Stop ends only the one it was for
        replaced = self.tasks.obsolete("suspects")
        data, model, train = config.data, config.model, config.train

        def job():
            return find_suspects(root, model.arch, model.weights, run_dir=run_dir, image_size=data.image_size,
                                 batch_size=train.batch_size, val_fraction=data.val_fraction, seed=train.seed,
                                 device=train.device, should_stop=lambda: stop.is_set() or replaced(),
                                 progress=report_progress)

        def report_progress(line: str) -> None:
            if not (stop.is_set() or replaced()):  # a stopped or replaced search says nothing more
                self.progressed.emit(line)

        def found(report) -> None:
            self.searching = False
            self.found.emit(report, root)

        self.searching = True
        self.tasks.submit("suspects", job, found, self._failed)

    def stop(self) -> None:
        self._stop.set()

    def _failed(self, message: str) -> None:
        self.searching = False
        self.failed.emit("Stopped." if self._stop.is_set() else message)

    def want_thumbnails(self, paths: list[str]) -> None:
        submit_thumbnails(self.tasks, "suspect-thumbnails", paths, self.thumbnails_ready.emit, lambda _: None)

