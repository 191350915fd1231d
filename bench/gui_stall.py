#!/usr/bin/env python3
"""The longest gap between 10 ms timer ticks on the GUI thread while the window trains.

Offscreen; demo dataset, resnet18 at 64 px, 3 epochs on CPU. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def main() -> int:
    app = QApplication(sys.argv)
    from app.main_window import window_with_private_settings

    window = window_with_private_settings(Path(tempfile.mkdtemp(prefix="ts-stall-")))
    window.show()
    window.open_demo_dataset()
    gaps: list[int] = []
    clock = QElapsedTimer()
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: gaps.append(clock.restart()) if clock.isValid() else clock.start())

    def start():
        if not window.is_ready:
            QTimer.singleShot(100, start)
            return
        window.model_panel.set_weights("none")
        window.data_panel.size_spin.setValue(64)
        window.training_panel.epochs_spin.setValue(3)
        window.training_panel.device_combo.setCurrentIndex(window.training_panel.device_combo.findData("cpu"))
        timer.start()
        window.start_training()

    def finished(_summary):
        timer.stop()
        window.close()
        app.quit()

    window.controller.run_finished.connect(finished)
    window.controller.run_failed.connect(lambda m: (print(m, file=sys.stderr), finished(None)))
    QTimer.singleShot(100, start)
    app.exec()
    values = np.array(gaps[1:], dtype=float)
    print(json.dumps({"ticks": int(values.size), "max_gap_ms": float(values.max()),
                      "p99_gap_ms": float(np.percentile(values, 99)), "median_gap_ms": float(np.median(values)),
                      "redraw_ms_with_100k_points": redraw_time_with_points(100_000)}))


def redraw_time_with_points(n: int) -> float:
    """Milliseconds to redraw and paint the plots holding n loss points (and two LR curves)."""
    from widgets.plots import TrainingPlots

    plots = TrainingPlots()
    plots.resize(700, 600)
    plots.show()
    for step in range(n):
        plots.add_batch({"epoch": 1 + step // 1000, "step": step % 1000 + 1, "steps": 1000,
                         "loss": float(np.exp(-step / n)), "lrs": {"base": 1e-3, "fc": 1e-2}})
    QApplication.processEvents()
    clock = QElapsedTimer()
    clock.start()
    for _ in range(10):
        plots.redraw()
        plots.repaint()
        QApplication.processEvents()
    return clock.elapsed() / 10
    return 0


if __name__ == "__main__":
    sys.exit(main())
