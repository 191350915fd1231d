"""A search off the GUI thread: the engine's worker loop (engine.search.worker.run_worker) on a QThread.

The study is opened, read and written only on that thread; what crosses back are plain rows
(engine.search.trials.TrialRow), the summary dict and one-line errors, through queued signals. Stop
sets the TrainingControl the trainer polls every batch: the trial in flight ends at once and is
failed, as Ctrl-C does in the command line, and the thread's loop returns. Nothing waits for it on
the GUI thread: `finished` or `failed` says when it has ended.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.run_events import describe_failure
from app.worker import STARTED_THREADS, lower_this_threads_priority
from engine.events import TrainingControl
from engine.search.trials import trial_rows
from engine.search.worker import SearchJob, load_study, run_worker, summary


class _SearchWork(QObject):
    """Lives on the search thread."""

    rows_changed = Signal(object)  # list[TrialRow]
    finished = Signal(object)  # the summary dict (engine.search.worker.summary)
    failed = Signal(str)

    def __init__(self, job: SearchJob, control: TrainingControl):
        super().__init__()
        self.job, self.control = job, control

    @Slot()
    def run(self) -> None:
        lower_this_threads_priority()  # the window keeps its core, as in a training run
        try:
            study = load_study(self.job)
            self.rows_changed.emit(trial_rows(study))  # a continued search shows its earlier trials at once
            run_worker(study, self.job, control=self.control,
                       on_trial_started=lambda number: self.rows_changed.emit(trial_rows(study)),
                       on_trial=lambda outcome: self.rows_changed.emit(trial_rows(study)))
            result = summary(study, self.job)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the dialog as one line
            self.failed.emit(describe_failure(exc))
        else:
            self.finished.emit(result)


class SearchRunner(QObject):
    """Owns one search's thread; re-emits its signals on the GUI thread."""

    rows_changed = Signal(object)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, job: SearchJob, parent=None):
        super().__init__(parent)
        self.control = TrainingControl()
        self._thread = QThread()
        self._thread.setObjectName("TransferStudioSearch")
        self._work = _SearchWork(job, self.control)
        self._work.moveToThread(self._thread)
        self._thread.started.connect(self._work.run)
        self._work.rows_changed.connect(self.rows_changed)
        self._work.finished.connect(self._on_finished)
        self._work.failed.connect(self._on_failed)

    def start(self) -> None:
        STARTED_THREADS.add(self._thread)  # tests prove no thread is left running
        self._thread.start()

    def stop(self) -> None:
        self.control.stop()

    @Slot(object)
    def _on_finished(self, result: dict) -> None:
        self._end()
        self.finished.emit(result)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._end()
        self.failed.emit(message)

    def _end(self) -> None:
        # run() has returned (its last signal is queued after it): the thread's loop ends at once.
        self._thread.quit()
        self._thread.wait()
        self._work.deleteLater()
        self._thread.deleteLater()
