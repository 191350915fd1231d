"""The window's garbage collection on the GUI thread (app/gc_guard.py): what survives the first full
collection is frozen, so later full collections look only at what came since."""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject

from app.gc_guard import FULL_COLLECTION_EVERY, GuiThreadCollector


def test_the_first_full_collection_freezes_its_survivors_and_later_ones_do_not(qtbot):
    parent = QObject()
    collector = GuiThreadCollector(parent, interval_ms=1)
    try:
        at_start = gc.get_freeze_count()
        imported_late = [[] for _ in range(1000)]  # as a module imported in the background, after start-up
        qtbot.waitUntil(lambda: collector._ticks >= FULL_COLLECTION_EVERY, timeout=10_000)
        after_first = gc.get_freeze_count()
        assert after_first >= at_start + len(imported_late)
        made_later = [[] for _ in range(1000)]
        qtbot.waitUntil(lambda: collector._ticks >= 2 * FULL_COLLECTION_EVERY + 1, timeout=10_000)
        assert gc.get_freeze_count() == after_first  # a later full collection freezes nothing
        assert not gc.isenabled() and imported_late and made_later
    finally:
        collector.stop()
    assert gc.get_freeze_count() == 0 and gc.isenabled()  # the window closed: everything is collectable again
