"""Closing the window while a run trains (issue 21, item 12): the window says it is stopping the run
and stays painted while the run stops (a thread, or a group of processes), then closes by itself; the
run's folder is left resumable, its lock released. With two processes, closing blocked the GUI thread
for the whole stop before (1.6 s); the test measures the longest stall and prints it."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QObject, Signal

import app.run_closer as run_closer
from app.run_closer import RunCloser
from engine.runs.run_folder import RunFolder
from tests.gui_helpers import StallMeter, find, wait_ready


class FakeController(QObject):
    """A TrainingController's side that RunCloser uses: a run that ends when told."""

    running_changed = Signal(bool)

    def __init__(self, running: bool):
        super().__init__()
        self.is_running, self.calls = running, []

    def stop(self):
        self.calls.append("stop")

    def hurry(self):
        self.calls.append("hurry")

    def end(self):
        self.is_running = False
        self.running_changed.emit(False)


class FakeTasks:
    accepting = True

    def stop_accepting(self):
        self.accepting = False


def closer(qtbot, running: bool) -> tuple[RunCloser, FakeController, FakeTasks, list]:
    controller, tasks, said = FakeController(running), FakeTasks(), []
    closing = RunCloser(controller, tasks)
    closing.stopping.connect(lambda: said.append("stopping"))
    closing.ready.connect(lambda: said.append("ready"))
    return closing, controller, tasks, said


def test_with_no_run_the_window_closes_at_once(qtbot):
    closing, controller, tasks, said = closer(qtbot, running=False)
    assert closing.may_close() and controller.calls == [] and said == [] and tasks.accepting


def test_a_run_is_stopped_once_and_the_window_closes_when_it_has_ended(qtbot):
    closing, controller, tasks, said = closer(qtbot, running=True)
    assert not closing.may_close() and closing.in_progress
    assert not closing.may_close()  # a second close (the person clicks again) stops nothing twice
    assert controller.calls == ["stop"] and said == ["stopping"] and not tasks.accepting
    with qtbot.waitSignal(closing.ready, timeout=1000):
        controller.end()
    assert said == ["stopping", "ready"] and closing.may_close()


def test_a_run_that_does_not_stop_is_hurried_then_given_up_on(qtbot, monkeypatch):
    monkeypatch.setattr(run_closer, "HURRY_MS", 20)
    monkeypatch.setattr(run_closer, "GIVE_UP_MS", 60)
    closing, controller, _, said = closer(qtbot, running=True)
    assert not closing.may_close()
    with qtbot.waitSignal(closing.ready, timeout=2000):
        pass
    assert controller.calls == ["stop", "hurry"] and said == ["stopping", "ready"]
    assert closing.may_close()  # the window closes; Session.shutdown's own wait takes over


@pytest.mark.slow
def test_closing_during_a_two_process_run_stops_it_without_freezing_and_leaves_it_resumable(qtbot, window,
                                                                                          demo_dir, capsys):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    window.session.settings.set_weights("none")
    find(window, "imageSizeSpin").setValue(32)
    window.session.settings.update_train({"epochs": 50, "batch_size": 16, "device": "cpu", "processes": 2})
    with qtbot.waitSignal(window.controller.epoch_finished, timeout=120_000):
        window.session.runs.start()
    folder = window.session.run.folder
    assert isinstance(folder, RunFolder) and folder.in_use()

    meter, while_stopping = StallMeter(), []
    # The run's end (the processes gone, its files written) comes before the window's own teardown.
    window.controller.running_changed.connect(lambda running: while_stopping.append(max(meter.gaps, default=0)))
    meter.start()
    qtbot.wait(100)  # a few ticks before: the first gap measured is a real one
    started = time.perf_counter()
    window.close()
    assert window.isVisible() and window.statusBar().currentMessage() == "Stopping the run…"  # painted, saying so
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)  # then closed by itself
    seconds = time.perf_counter() - started
    qtbot.wait(100)
    longest = meter.stop()
    with capsys.disabled():
        print(f"\nclosing during a 2-process run: longest GUI-thread stall {while_stopping[0]} ms while the run "
              f"stopped, {longest} ms in all (the window's own teardown included); closed in {seconds:.2f} s")

    assert not window.controller.is_running
    assert not folder.in_use()  # every process let go of the folder
    record = folder.read_run()
    assert record.status == "stopped" and record.result is not None and record.result.stopped == "user"
    state = folder.read_resume_state()  # resumable from its last completed epoch
    assert state["epoch"] >= 1 and len(folder.read_epochs()) == state["epoch"]
