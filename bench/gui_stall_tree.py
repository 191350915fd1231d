#!/usr/bin/env python3
"""The longest GUI-thread stall when the person edits a big, fully expanded layer tree.

Offscreen. For each architecture (weights "none": nothing is downloaded) a LayerTreeModel and a
LayerTreeView are built, every row expanded, the view shown; then each scenario runs on the GUI
thread while a 10 ms QTimer ticks, and the longest gap between ticks is the stall the person
would feel. Prints one JSON line per scenario: the worst and median stall over the rounds, the time
in the edit itself, and how many dataChanged signals and data() calls the edit and its repaint cost
(the repaint covers the rows on screen, so it grows with the view's height, not the tree's size).

    python bench/gui_stall_tree.py [--archs resnet152,efficientnet_b0,convnext_tiny] [--size 1000x800] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.gc_guard import GuiThreadCollector  # noqa: E402
from engine.config import PlanConfig  # noqa: E402
from engine.model.architectures import build_model  # noqa: E402
from widgets.layer_tree import FROZEN, LR, LayerTreeModel, LayerTreeView  # noqa: E402

ARCHS = ("resnet152", "efficientnet_b0", "convnext_tiny")
TICK_MS = 10
SETTLE_MS = 600  # after the edit: long enough for the repaint it causes


class CountingModel(LayerTreeModel):
    """Counts the view's data() calls: the model-side cost of an edit."""

    def __init__(self):
        super().__init__()
        self.data_calls = 0
        self.data_changed = 0
        self.dataChanged.connect(self._count_change)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        self.data_calls += 1
        return super().data(index, role)

    def _count_change(self, *_args) -> None:
        self.data_changed += 1


def longest_stall(action) -> tuple[float, float]:
    """(longest gap between 10 ms ticks in ms, seconds spent in `action` itself)."""
    gaps: list[int] = []
    clock = QElapsedTimer()
    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.setInterval(TICK_MS)
    ticker.timeout.connect(lambda: gaps.append(clock.restart()))
    spent = []

    def run():
        start = time.perf_counter()
        action()
        spent.append(time.perf_counter() - start)

    clock.start()
    ticker.start()
    QTimer.singleShot(50, run)
    loop = QEventLoop()
    QTimer.singleShot(50 + SETTLE_MS, loop.quit)
    loop.exec()
    ticker.stop()
    return float(max(gaps)), spent[0]


def biggest_top_level_stage(model: LayerTreeModel) -> str:
    """The root's child with the most modules below it (layer3 of a resnet, features of the others)."""
    info = model.model_info
    tops = [layer.name for layer in info.layers if layer.parent == ""]
    return max(tops, key=lambda top: sum(1 for layer in info.layers if layer.name.startswith(top + ".")))


def scenarios(model: LayerTreeModel, stage: str, round_: int) -> list[tuple[str, object]]:
    check = Qt.ItemDataRole.CheckStateRole

    def preset(strategy):
        return lambda: model.set_plan_config(replace(model.plan_config, strategy=strategy, edits=()))

    def base_lr(value):  # as the window's Base LR box does
        return lambda: model.set_plan_config(replace(model.plan_config, base_lr=value))

    return [
        ("preset fine-tune", preset("fine-tune")),
        ("preset discriminative", preset("discriminative")),
        ("preset gradual", preset("gradual")),
        ("preset feature-extraction", preset("feature-extraction")),
        (f"frozen click {stage}", lambda: model.setData(model.index_for(stage, FROZEN), Qt.CheckState.Unchecked.value, check)),
        (f"frozen click {stage} again", lambda: model.setData(model.index_for(stage, FROZEN), Qt.CheckState.Checked.value, check)),
        (f"LR edit {stage}", lambda: model.setData(model.index_for(stage, LR), 2.5e-4, Qt.ItemDataRole.EditRole)),
        ("weight decay edit", lambda: model.set_weight_decay(0.05)),
        ("base LR edit", base_lr(3e-4 * (1 + round_))),
    ]


def tree_view(arch: str, size: tuple[int, int], model: LayerTreeModel) -> LayerTreeView:
    view = LayerTreeView()
    view.setModel(model)
    view.resize(*size)
    model.set_model_info(build_model(arch, 10, "none").info, PlanConfig(strategy="feature-extraction"), 0.01)
    view.show()
    view.expandAll()
    longest_stall(lambda: None)  # settle: the first layout and paint of the expanded tree
    return view


def data_calls_per_scenario(arch: str, size: tuple[int, int]) -> dict[str, int]:
    """One extra round with a counting model. Kept out of the timed rounds: a Python override of
    data() costs microseconds per call, thousands of calls per edit, and would inflate the stalls."""
    model = CountingModel()
    view = tree_view(arch, size, model)
    calls = {}
    model.set_weight_decay(0.01)
    for name, action in scenarios(model, biggest_top_level_stage(model), 0):
        model.data_calls = 0
        longest_stall(action)
        calls[name] = model.data_calls
    view.close()
    return calls


def bench_arch(arch: str, size: tuple[int, int], repeat: int) -> None:
    model = LayerTreeModel()
    changed = []
    model.dataChanged.connect(lambda *_: changed.append(1))
    view = tree_view(arch, size, model)
    stage = biggest_top_level_stage(model)
    runs: dict[str, list[dict]] = {}
    for round_ in range(repeat):
        model.set_weight_decay(0.01)  # so that each round's weight-decay edit (to 0.05) is a change
        for name, action in scenarios(model, stage, round_):
            changed.clear()
            stall_ms, edit_s = longest_stall(action)
            runs.setdefault(name, []).append({"gap": stall_ms, "edit": edit_s * 1000, "changed": len(changed)})
    view.close()
    calls = data_calls_per_scenario(arch, size)
    for name, results in runs.items():
        gaps = [r["gap"] for r in results]
        print(json.dumps({"arch": arch, "modules": len(model.model_info.layers), "view": f"{size[0]}x{size[1]}",
                          "scenario": name, "max_gap_ms": max(gaps), "median_gap_ms": statistics.median(gaps),
                          "runs": len(gaps), "median_edit_ms": round(statistics.median(r["edit"] for r in results), 2),
                          "data_changed": results[-1]["changed"], "data_calls": calls[name]}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--size", default="1000x800", help="the view's size in pixels, WIDTHxHEIGHT")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every scenario (the machine may be shared)")
    args = parser.parse_args()
    app = QApplication.instance() or QApplication(sys.argv)  # noqa: F841 - kept alive for the run
    # As in the window: garbage is collected on the GUI thread on a timer, not by whichever
    # allocation crosses a threshold (which, with a model's objects alive, took 20-30 ms mid-edit).
    collector = GuiThreadCollector(app)  # noqa: F841
    width, height = (int(v) for v in args.size.split("x"))
    for arch in args.archs.split(","):
        bench_arch(arch, (width, height), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
