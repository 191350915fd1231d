#!/usr/bin/env python3
"""Make docs/screenshot.png: the window on the demo dataset, mid-training, discriminative LRs.

    .venv/bin/python scripts/screenshot.py [--out docs/screenshot.png]

Runs offscreen (no display needed); trains a real run on CPU and grabs the window after the
fourth of eight epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--grab-after-epoch", type=int, default=4)
    args = parser.parse_args()
    app = QApplication(sys.argv)
    app.setStyleSheet((ROOT / "resources" / "style.qss").read_text())
    from app.main_window import window_with_private_settings

    window = window_with_private_settings(Path(tempfile.mkdtemp(prefix="ts-shot-")))
    window.resize(1500, 940)
    window.show()
    window.open_demo_dataset()

    def configure_and_start():
        if not window.is_ready:
            QTimer.singleShot(200, configure_and_start)
            return
        window.model_panel.set_weights("none")
        window.data_panel.size_spin.setValue(64)
        window.training_panel.epochs_spin.setValue(8)
        window.training_panel.device_combo.setCurrentIndex(window.training_panel.device_combo.findData("cpu"))
        window.model_panel.preset_buttons["discriminative"].click()
        window.model_panel.tree.expand(window.model_panel.tree_model.index_for("layer4"))
        window.start_training()

    def maybe_grab(event: dict):
        if event["epoch"] == args.grab_after_epoch:
            QTimer.singleShot(600, grab)

    def grab():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        window.grab().save(args.out)
        print(f"wrote {args.out}")
        window.close()
        app.quit()

    window.controller.epoch_finished.connect(maybe_grab)
    QTimer.singleShot(300, configure_and_start)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
