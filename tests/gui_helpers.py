"""Fixtures for window tests: an isolated QSettings, a temporary runs folder, no dangling threads."""

from __future__ import annotations

import gc
import threading

import pytest
from app.main_window import window_with_private_settings
from app.worker import STARTED_THREADS


def _python_threads() -> set:
    # Dummy entries stand for foreign threads (QThreads) that once ran Python code; Python keeps
    # them forever, so QThreads are checked through STARTED_THREADS instead.
    return {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}


def _running_qthreads() -> list:
    alive = []
    for thread in list(STARTED_THREADS):
        try:
            if thread.isRunning():
                alive.append(thread)
        except RuntimeError:  # the C++ object is already deleted: it finished
            pass
    return alive


@pytest.fixture
def window(qtbot, tmp_path):
    before = _python_threads()
    win = window_with_private_settings(tmp_path / "window")
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()
    gc.disable()  # closing turned automatic collection back on; the window's threads may still allocate
    qtbot.waitUntil(lambda: not _running_qthreads(), timeout=60_000)
    try:
        qtbot.waitUntil(lambda: not (_python_threads() - before), timeout=10_000)
    except Exception:
        raise AssertionError(f"threads left running: {_python_threads() - before}")
    assert not win.controller.is_running, "the window left a training thread running"


def wait_ready(qtbot, win, classes: int | None = None) -> None:
    """Until the scan is shown and the tree is built for the dataset."""
    def ready():
        info = win.session.model_info
        return win.is_ready and (classes is None or info.num_classes == classes)
    qtbot.waitUntil(ready, timeout=60_000)


def find(win, name):
    """The window's widget of that object name; fails the test when there is none."""
    from PySide6.QtWidgets import QWidget

    widget = win.findChild(QWidget, name)
    assert widget is not None, name
    return widget


def click_plot_point(qtbot, plot, x: float, y: float) -> None:
    """A left click on a pyqtgraph plot at data coordinates (x, y)."""
    from PySide6.QtCore import QPointF, Qt

    scene = plot.getPlotItem().vb.mapViewToScene(QPointF(x, y))
    qtbot.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, pos=plot.mapFromScene(scene))


def choose(combo, data) -> None:
    """Pick an entry of a combo box as a person does (activated, then changed)."""
    index = combo.findData(data)
    assert index >= 0, data
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


class StallMeter:
    """The GUI thread's longest stall, as bench/gui_stall.py measures it: the gaps between ticks of a
    10 ms QTimer; a gap well above 10 ms is time the window could neither paint nor react."""

    def __init__(self):
        from PySide6.QtCore import QElapsedTimer, QTimer

        self.gaps: list[int] = []
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        if self._clock.isValid():
            self.gaps.append(self._clock.restart())
        else:
            self._clock.start()

    def start(self) -> None:
        self.gaps = []
        self._clock.invalidate()
        self._timer.start()

    def stop(self) -> int:
        """The longest gap in ms since start()."""
        self._timer.stop()
        return max(self.gaps, default=0)
