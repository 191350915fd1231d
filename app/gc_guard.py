"""Python's cyclic garbage collector runs in whichever thread happens to allocate when a threshold
is crossed. If that is the training thread (or a background task) and the garbage holds a Qt
object's wrapper, the C++ destructor runs there: it takes Qt's mutex and waits for the GIL while
the GUI thread, holding the GIL, waits for that mutex. The window hangs for good (seen in a test:
a closed window's menu collected while the training thread built a model).

So while a window lives, automatic collection is off and the GUI thread collects instead: the
young generation every second (microseconds), everything every 30 seconds. What the window
needed at start-up is frozen out of the collector's sight first, so a full collection stays cheap;
so is what survives the first full collection: the modules imported in the background meanwhile
(timm's registry of model configurations, ~60,000 objects) made each later full collection a
55-120 ms stall on 2 busy cores. Reference counting still frees all acyclic garbage at once, in any
thread; a cycle among frozen objects is freed when the window closes.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer, Slot

FULL_COLLECTION_EVERY = 30  # ticks


class GuiThreadCollector(QObject):
    def __init__(self, parent: QObject, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        gc.collect()  # leftovers (a closed window's widgets) go now, on this thread
        gc.freeze()
        gc.disable()
        self._ticks = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._collect)
        self._timer.start()

    @Slot()
    def _collect(self) -> None:
        self._ticks += 1
        if self._ticks % FULL_COLLECTION_EVERY:
            gc.collect(0)
            return
        gc.collect(2)
        if self._ticks == FULL_COLLECTION_EVERY:
            gc.freeze()  # the first half-minute's survivors: mostly what was imported late, which lives on

    def stop(self) -> None:
        """The window closes: automatic collection as before (no other thread of ours runs now)."""
        self._timer.stop()
        gc.unfreeze()
        gc.enable()
        gc.collect()
