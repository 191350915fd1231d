"""Python's cyclic garbage collector runs in whichever thread happens to allocate when a threshold
is crossed. If that is the training thread (or a background task) and the garbage holds a Qt
object's wrapper, the C++ destructor runs there: it takes Qt's mutex and waits for the GIL while
the GUI thread, holding the GIL, waits for that mutex. The window hangs for good (seen in a test:
a closed window's menu collected while the training thread built a model).

So while a window lives, automatic collection is off and the GUI thread collects instead: the
young generation five times a second (a whole second of a training thread's allocations took up to
70 ms) and the middle one every two seconds (milliseconds). A full
collection looks at every object, 100-400 ms on 2 busy cores once torch, timm and a model are in
memory, so it runs by Python's own rule, only when the oldest generation has grown by a quarter
since the last one (checked every half-minute; counting it takes a few milliseconds), never on a
fixed clock that would stall the window every 30 s. What the window needed at start-up is frozen
out of the collector's sight first, and so is what survives the first full collection: the
modules imported in the background meanwhile (timm's registry of model configurations, ~60,000
objects). Reference counting still frees all acyclic garbage at once, in any thread; a cycle among
frozen objects lives as long as the process.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer, Slot

TICK_MS = 200
MIDDLE_COLLECTION_EVERY = 10  # ticks: 2 s (ten seconds of survivors took 50-70 ms)
FULL_CHECK_EVERY = 150  # ticks: 30 s
FULL_WHEN_GROWN_BY = 0.25  # as CPython's own rule for its oldest generation


class GuiThreadCollector(QObject):
    def __init__(self, parent: QObject, interval_ms: int = TICK_MS) -> None:
        super().__init__(parent)
        gc.collect()  # leftovers (a closed window's widgets) go now, on this thread
        gc.freeze()
        gc.disable()
        self._ticks = 0
        self._full_collections = 0
        self._old_after_full = 0  # objects in the oldest generation after the last full collection
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._collect)
        self._timer.start()

    @property
    def full_collections(self) -> int:
        return self._full_collections

    @Slot()
    def _collect(self) -> None:
        self._ticks += 1
        if self._ticks % FULL_CHECK_EVERY == 0 and self._oldest_has_grown():
            self._collect_everything()
        elif self._ticks % MIDDLE_COLLECTION_EVERY == 0:
            gc.collect(1)
        else:
            gc.collect(0)

    def _oldest_has_grown(self) -> bool:
        return len(gc.get_objects(generation=2)) > (1 + FULL_WHEN_GROWN_BY) * self._old_after_full

    def _collect_everything(self) -> None:
        gc.collect(2)
        self._full_collections += 1
        if self._full_collections == 1:
            gc.freeze()  # the first half-minute's survivors: mostly what was imported late, which lives on
        self._old_after_full = len(gc.get_objects(generation=2))

    def stop(self) -> None:
        """The window closes: automatic collection as before (no other thread of ours runs now), for
        what was made since the freezes. What was frozen stays frozen: collecting it all here held the
        closing window for 300 ms, and the process is ending (the test suite unfreezes it per file)."""
        self._timer.stop()
        gc.enable()
