#!/usr/bin/env python3
"""Make a screenshot of the window mid-training on the demo dataset (gradual unfreezing, so the
tree shows integrity badges on the still-frozen stages and update ratios on the training ones).

    .venv/bin/python scripts/screenshot.py [--out docs/screenshot.png] [--size 1500x940]
    .venv/bin/python scripts/screenshot.py --out docs/screenshot-1024x700.png --size 1024x700

Runs offscreen (no display needed); trains a real run on CPU and grabs the window after the
chosen epoch. It needs no download: a stand-in for resnet18's ImageNet weights (random values
under the expected file name) goes into a temporary TORCH_HOME, so the curves are not those of a
pretrained model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="ts-shot-torch-")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def place_stand_in_weights(arch: str = "resnet18") -> None:
    import torch
    import torchvision

    from engine.model.architectures import weights_cache_path

    target = weights_cache_path(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.get_model(arch, num_classes=1000).state_dict(), target)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--size", default="1500x940", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--grab-after-epoch", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    place_stand_in_weights()
    app = QApplication(sys.argv)
    app.setStyleSheet((ROOT / "resources" / "style.qss").read_text())
    from app.main_window import window_with_private_settings

    window = window_with_private_settings(Path(tempfile.mkdtemp(prefix="ts-shot-")))
    window.resize(width, height)
    window.show()
    window.session.datasets.open_demo()
    session = window.session

    def configure_and_start():
        if not window.is_ready:
            QTimer.singleShot(200, configure_and_start)
            return
        session.settings.update_data({"image_size": 64, "augment": "light"})
        session.settings.update_train({"epochs": 8, "device": "cpu"})
        session.plan.apply_preset("gradual")
        tree = window.model_panel.tree
        tree.expand(window.model_panel.tree_model.index_for("layer4"))
        window.plots.set_update_ratio_visible(True)
        window.session.runs.start()

    def maybe_grab(event):
        if event.epoch == args.grab_after_epoch:
            QTimer.singleShot(600, grab)

    def grab():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        window.grab().save(args.out)
        print(f"wrote {args.out}")
        # A run still training is stopped first: the window closes (and the app quits) once it has ended.
        window.session.closing.ready.connect(app.quit)
        window.close()
        if not window.isVisible():
            app.quit()

    window.controller.epoch_finished.connect(maybe_grab)
    QTimer.singleShot(300, configure_and_start)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
