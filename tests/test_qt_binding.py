"""Guards against a Qt binding that would crash the window during a long run."""

import sys

from PySide6.QtCore import QCoreApplication, QObject, Signal


class _Emitter(QObject):
    happened = Signal(dict)


def test_signal_emission_keeps_reference_counts(qapp):
    # PySide6 6.12.0 dropped a reference to True on every emission; on Python < 3.12 the process
    # then aborts ("deallocating True or False") after a few thousand training events.
    emitter = _Emitter()
    received = []
    emitter.happened.connect(received.append)
    before = sys.getrefcount(True)
    for i in range(200):
        emitter.happened.emit({"step": i})
    QCoreApplication.processEvents()
    assert len(received) == 200
    assert sys.getrefcount(True) - before > -10
