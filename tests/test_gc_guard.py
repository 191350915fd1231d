"""The window's garbage collection on the GUI thread (app/gc_guard.py): what survives the first full
collection is frozen, so later full collections look only at what came since."""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject

from app.gc_guard import FULL_COLLECTION_EVERY, GuiThreadCollector


def in_collectors_sight(thing) -> bool:
    """Whether a collection looks at `thing` (frozen objects are out of the generations it lists)."""
    return any(o is thing for o in gc.get_objects())


def test_the_first_full_collection_freezes_its_survivors_and_later_ones_do_not(qtbot):
    window = QObject()  # the collector's parent, as the window is
    collector = GuiThreadCollector(window, interval_ms=1)
    try:
        imported_late = []  # as a module imported in the background, after start-up
        assert in_collectors_sight(imported_late)
        qtbot.waitUntil(lambda: collector._ticks >= FULL_COLLECTION_EVERY, timeout=10_000)
        assert not in_collectors_sight(imported_late)
        made_later = []
        qtbot.waitUntil(lambda: collector._ticks >= 2 * FULL_COLLECTION_EVERY + 1, timeout=10_000)
        assert in_collectors_sight(made_later)  # a later full collection freezes nothing
        assert not gc.isenabled()
    finally:
        collector.stop()
    assert in_collectors_sight(imported_late) and gc.isenabled()  # the window closed: all collectable again
