"""Closing the window while a run trains: stop the run, let it end, then close.

A stopped run ends at a step boundary and writes its outcome to run.json (resume.pt already holds
its last completed epoch); with several processes the ranks first agree on the step, then torchrun
tears them down. Waiting for that on the GUI thread froze the window (1.6 s for two processes, more on
a busy machine). Here the window stays open and painted, says it is stopping the run, and closes when
the run's end arrives as the usual signal (QProcess's finished, the thread's queued result).

A run that does not end is hurried: after HURRY_MS its processes get SIGTERM (torchrun passes it on to
its ranks), then SIGKILL (engine side: TrainingProcess.terminate); a thread can only be waited for.
After GIVE_UP_MS the window closes anyway, and Session.shutdown's blocking wait does what it always did.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.worker import BackgroundTasks, TrainingController

HURRY_MS = 30_000
GIVE_UP_MS = 60_000


class RunCloser(QObject):
    stopping = Signal()  # the window asked to close while a run trains: it is being stopped
    ready = Signal()  # the run has ended (or will not): the window may close now

    def __init__(self, controller: TrainingController, tasks: BackgroundTasks, parent=None):
        super().__init__(parent)
        self._controller, self._tasks = controller, tasks
        self._asked = False  # a close waits for the run: a second close must not stop it again
        self._hurry = self._timer(HURRY_MS, controller.hurry)
        self._give_up = self._timer(GIVE_UP_MS, self.ready.emit)
        controller.running_changed.connect(self._on_running_changed)

    def _timer(self, ms: int, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    @property
    def in_progress(self) -> bool:
        """A close is waiting for the run to end."""
        return self._asked

    def may_close(self) -> bool:
        """True when no run trains. Else the run is asked to stop (once) and False: `ready` says when
        it has ended."""
        if not self._controller.is_running:
            return True
        if self._asked:
            return not self._give_up.isActive()  # waited GIVE_UP_MS: close, Session.shutdown waits as before
        self._asked = True
        # The run's end starts its insight and the runs list reading; the closing window would then
        # wait for them on the GUI thread (Session.shutdown), for nothing it will show.
        self._tasks.stop_accepting()
        self._controller.stop()
        self._hurry.start()
        self._give_up.start()
        self.stopping.emit()
        return False

    @Slot(bool)
    def _on_running_changed(self, running: bool) -> None:
        if running or not self._asked:
            return
        self._hurry.stop()
        self._give_up.stop()
        # After the run's end has reached everyone listening (run_finished comes after running_changed).
        QTimer.singleShot(0, self, self.ready.emit)
