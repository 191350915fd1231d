#!/usr/bin/env python3
"""The GUI thread's longest stall while the window shows a run's calibration and exports int8 ONNX.

    .venv/bin/python bench/gui_stall_deploy.py

Offscreen, on CPU, with bench/gui_stall.py's StallMeter (the gaps between ticks of a 10 ms QTimer).
Set-up (not timed): the demo dataset, resnet18 at 64 px, random init, 2 epochs of feature extraction
in the window. Then one JSON line per scenario:
  calibration      the run's Insight read again with the Calibration tab shown (run.json's figures and
                   the reliability diagram from val_logits.pt, computed off the GUI thread)
  calibration tab  switching to the Calibration tab from the Images tab (the diagram drawn)
  diagram          the Calibration tab shown, the diagram and figures set anew (their GUI-thread cost alone;
                   "calibration" includes the whole Insight tab's confusion matrix, gallery and map)
  export           ONNX alone from the Export controller (the child process): the baseline
  int8 export      ONNX and int8 ONNX likewise (the child also quantizes, measures both files on the
                   validation images and their throughput)
  idle             two seconds of nothing: the machine's own noise floor
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gui_stall import StallMeter, measure, settle, wait_until  # noqa: E402 - sets the offscreen platform first

from PySide6.QtWidgets import QApplication  # noqa: E402


def timed(meter: StallMeter, name: str, action, done, **extra) -> dict:
    """bench.gui_stall.measure, and when the longest gap began (seconds after the action): a stall at
    0 s is the action itself (starting a process), a later one what follows."""
    line = measure(meter, name, action, done, **extra)
    if meter.gaps:
        longest = max(range(len(meter.gaps)), key=meter.gaps.__getitem__)
        line["max_gap_at_s"] = round(sum(meter.gaps[:longest]) / 1000, 2)
    return line


def main() -> int:
    application = QApplication(sys.argv)
    from app.main_window import window_with_private_settings
    from engine.deploy.int8 import Int8Settings

    window = window_with_private_settings(Path(tempfile.mkdtemp(prefix="ts-stall-deploy-")))
    window.resize(1024, 700)
    window.show()
    session, insight, meter = window.session, window.insight, StallMeter()
    session.datasets.open_demo()
    session.settings.set_arch("resnet18")
    wait_until(lambda: window.is_ready and window.model_panel.tree_model.model_info.arch == "resnet18", 120, "demo")
    session.settings.set_weights("none")
    session.plan.apply_preset("feature-extraction")
    session.settings.update_data({"image_size": 64})
    session.settings.update_train({"epochs": 2, "device": "cpu"})
    finished = []
    window.controller.run_finished.connect(finished.append)
    window.controller.run_failed.connect(finished.append)
    session.runs.start()
    wait_until(lambda: bool(finished), 600, "the run")
    window.show_view(insight)
    settle(2.0)
    results = [measure(meter, "idle", lambda: None, lambda: True, pause_s=2.0)]

    shown = []
    session.insight.insight_ready.connect(lambda found: shown.append(found))
    insight.tabs.setCurrentWidget(insight.reliability)
    settle()
    results.append(timed(meter, "calibration", lambda: session.insight.open_insight(session.run.folder),
                           lambda: bool(shown) and bool(insight.reliability.curve_points()["after"][0]), pause_s=1.0))
    results[-1]["validation_images"] = shown[-1].calibration.images if shown[-1].calibration else 0
    insight.tabs.setCurrentIndex(0)
    settle()
    results.append(timed(meter, "calibration tab", lambda: insight.tabs.setCurrentWidget(insight.reliability),
                           lambda: True, pause_s=1.0))

    insight.show_calibration(None)
    settle()
    results.append(timed(meter, "diagram", lambda: insight.show_calibration(shown[-1].calibration), lambda: True,
                         pause_s=1.0))

    reports = []
    out = Path(tempfile.mkdtemp(prefix="ts-export-int8-"))
    session.exports.finished.connect(lambda folder, done: reports.append(done))
    session.exports.failed.connect(reports.append)
    settle()
    results.append(timed(meter, "export", lambda: session.exports.start(str(out), ["onnx"]),
                           lambda: bool(reports), formats=["onnx"], process=True))
    reports.clear()
    settle()
    results.append(timed(meter, "int8 export", lambda: session.exports.start(str(out), ["onnx"], Int8Settings()),
                           lambda: bool(reports), formats=["onnx", "onnx-int8"], process=True))
    said = reports[-1] if isinstance(reports[-1], list) else []
    entry = next((r for r in said if r.get("format") == "onnx-int8"), None)
    results[-1]["int8"] = {k: entry[k] for k in ("passed", "accuracy_drop", "speedup")} if entry else str(reports[-1])
    window.close()
    application.processEvents()
    for line in results:
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
