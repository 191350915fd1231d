"""The window's garbage collection on the GUI thread (app/gc_guard.py): what survives the first full
collection is frozen, and later full collections run only when the oldest generation has grown by a
quarter, never on a fixed clock (each looks at every object: a stall of 100-400 ms)."""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject

from app.gc_guard import FULL_CHECK_EVERY, GuiThreadCollector


def in_collectors_sight(thing) -> bool:
    """Whether a collection looks at `thing` (frozen objects are out of the generations it lists)."""
    return any(o is thing for o in gc.get_objects())


def test_the_first_full_collection_freezes_its_survivors_and_later_ones_do_not(qtbot):
    window = QObject()  # the collector's parent, as the window is
    collector = GuiThreadCollector(window, interval_ms=1)
    try:
        imported_late = []  # as a module imported in the background, after start-up
        assert in_collectors_sight(imported_late)
        qtbot.waitUntil(lambda: collector.full_collections == 1, timeout=10_000)
        assert not in_collectors_sight(imported_late)
        made_later = [[] for _ in range(len(gc.get_objects(generation=2)) + 1000)]  # the oldest generation doubles
        qtbot.waitUntil(lambda: collector.full_collections == 2, timeout=10_000)
        assert in_collectors_sight(made_later)  # a later full collection freezes nothing
        assert not gc.isenabled()
    finally:
        collector.stop()
    # The window closed: automatic collection again, with no full pass over what was frozen (300 ms while closing).
    assert gc.isenabled() and not in_collectors_sight(imported_late)
    gc.unfreeze()


def test_no_full_collection_while_the_oldest_generation_stays_as_it_was(qtbot):
    window = QObject()
    collector = GuiThreadCollector(window, interval_ms=1)
    try:
        qtbot.waitUntil(lambda: collector.full_collections == 1, timeout=10_000)
        # As after start-up in a person's window: hundreds of thousands of objects in the oldest generation,
        # a few hundred more since (the test's own).
        collector._old_after_full = 10 * len(gc.get_objects(generation=2)) + 10_000
        ticks = collector._ticks
        qtbot.waitUntil(lambda: collector._ticks >= ticks + 3 * FULL_CHECK_EVERY, timeout=10_000)
        assert collector.full_collections == 1  # three checks, nothing grown by a quarter: no 100-400 ms pass
    finally:
        collector.stop()
