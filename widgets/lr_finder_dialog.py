"""The LR finder dialog: the range test's curve on a log axis, its suggestions marked, and Apply.

The sweep runs through `submit(fn, on_done, on_error)` (the window's BackgroundTasks: off the GUI
thread, results back on it); Stop sets the TrainingControl the engine polls every step. Apply
emits the plan with every LR times the chosen multiplier (engine.insight.lr_finder.scale_plan), so the
ratios between layers stay exactly as they were.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from engine.config import PlanConfig, RunConfig
from engine.data.dataset import DatasetScan
from engine.events import TrainingControl
from engine.insight.lr_finder import DEFAULT_STEPS, RangeTest, find_lr, scale_plan

CURVE_COLOUR = (31, 119, 180)
MARK_COLOURS = {"valley": (44, 160, 44), "steepest": (255, 127, 14), "minimum/10": (148, 103, 189)}
RULE_NAMES = {"valley": "valley (suggested)", "steepest": "steepest fall", "minimum/10": "minimum ÷ 10"}

Submit = Callable[[Callable[[], RangeTest], Callable[[RangeTest], None], Callable[[str], None]], object]


class LrFinderDialog(QDialog):
    applied = Signal(object)  # PlanConfig: the plan with every LR times the chosen multiplier

    def __init__(self, config: RunConfig, scan: DatasetScan | None, submit: Submit, steps: int = DEFAULT_STEPS,
                 parent=None):
        super().__init__(parent)
        self.setObjectName("lrFinderDialog")
        self.setWindowTitle("LR finder")
        self.config, self.scan, self.submit, self.steps = config, scan, submit, steps
        self.control: TrainingControl | None = None
        self.result: RangeTest | None = None
        self.plot = pg.PlotWidget(background="w")
        self.plot.setObjectName("lrFinderPlot")
        self.plot.setLogMode(x=True)
        self.plot.setLabel("bottom", "base LR (every group keeps its ratio to it)")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)  # "(x0.001)" beside LRs read as a scale
        self.plot.setLabel("left", "smoothed loss")
        self.plot.setMinimumSize(420, 240)
        self.curve = self.plot.plot(pen=pg.mkPen(CURVE_COLOUR, width=1))
        self.marks = pg.ScatterPlotItem(size=9)
        self.plot.addItem(self.marks)
        self.chosen_line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen((120, 120, 120), style=Qt.DashLine))
        self.chosen_line.hide()
        self.plot.addItem(self.chosen_line)
        self.legend = self.plot.addLegend(offset=(-10, 10), labelTextSize="8pt")  # top right: the loss rises there last
        self.status = QLabel(f"Sweeps one multiplier over the whole plan in {steps} steps; nothing is kept.")
        self.status.setObjectName("lrFinderStatus")
        self.status.setWordWrap(True)
        self.choice = QComboBox()
        self.choice.setObjectName("lrFinderChoice")
        self.choice.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # "valley: 1.3e-04" whole
        self.choice.currentIndexChanged.connect(self._show_choice)
        self.start_button = QPushButton("Run")
        self.start_button.setObjectName("lrFinderStart")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("lrFinderStop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setObjectName("lrFinderApply")
        self.apply_button.setEnabled(False)
        self.apply_button.clicked.connect(self._apply)
        buttons = QHBoxLayout()
        for widget in (self.start_button, self.stop_button, self.choice):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        buttons.addWidget(self.apply_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)

    # --- running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.control is not None

    def start(self) -> None:
        if self.running:
            return
        control = self.control = TrainingControl()
        config, scan, steps = self.config, self.scan, self.steps
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.apply_button.setEnabled(False)
        self.status.setText("Running the range test...")
        self.submit(lambda: find_lr(config, scan, steps=steps, control=control), self.show_result,
                    self.show_failure)

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
            self.status.setText("Stopping...")

    def done(self, code: int) -> None:  # closing the dialog stops a sweep still running
        self.stop()
        super().done(code)

    def _finished(self) -> None:
        self.control = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    # --- results ------------------------------------------------------------------------------

    def show_failure(self, message: str) -> None:
        self._finished()
        self.status.setText(f"The range test failed: {message}")

    def show_result(self, result: RangeTest) -> None:
        self._finished()
        self.result = result
        x = np.array([p.multiplier * result.base_lr for p in result.curve], dtype=float)
        y = np.array([p.loss for p in result.curve], dtype=float)
        self.curve.setData(x, y)
        suggestions = [s for s in (result.suggestion, *result.alternatives) if s is not None]
        index = {round(p.multiplier, 12): i for i, p in enumerate(result.curve)}
        spots = []
        for s in suggestions:
            i = index.get(round(s.multiplier, 12))
            loss = result.curve[i].loss if i is not None else float(np.interp(np.log10(s.base_lr), np.log10(x), y))
            spots.append({"pos": (np.log10(s.base_lr), loss), "brush": pg.mkBrush(MARK_COLOURS.get(s.rule, (0, 0, 0))),
                          "data": s.rule})
        self.marks.setData(spots)
        self._show_legend([s.rule for s in suggestions])
        self.choice.blockSignals(True)
        self.choice.clear()
        for s in suggestions:
            self.choice.addItem(f"{s.rule}: ×{s.multiplier:.3g} (base LR {s.base_lr:.3g})", s)
        self.choice.blockSignals(False)
        stopped = {"user": "stopped", "diverged": "stopped when the loss diverged", "completed": "finished"}
        self.status.setText(f"{len(result.curve)} steps, {stopped.get(result.stopped, result.stopped)}."
                            + ("" if suggestions else " Too few steps to suggest a multiplier."))
        self.apply_button.setEnabled(bool(suggestions))
        self._show_choice()

    def _show_legend(self, rules: list[str]) -> None:
        """What the curve, each suggestion's colour and the dashed line mean."""
        self.legend.clear()
        self.legend.addItem(self.curve, "smoothed loss")
        for rule in dict.fromkeys(rules):
            colour = MARK_COLOURS.get(rule, (0, 0, 0))
            key = pg.PlotDataItem(pen=None, symbol="o", symbolSize=9, symbolPen=None, symbolBrush=colour)
            self.legend.addItem(key, RULE_NAMES.get(rule, rule))
        if rules:
            self.legend.addItem(pg.PlotDataItem(pen=self.chosen_line.pen), "chosen (what Apply uses)")

    def legend_names(self) -> list[str]:
        return [label.text for _, label in self.legend.items]

    def chosen_multiplier(self) -> float | None:
        suggestion = self.choice.currentData()
        return None if suggestion is None else suggestion.multiplier

    def scaled_plan(self) -> PlanConfig | None:
        multiplier = self.chosen_multiplier()
        return None if multiplier is None else scale_plan(self.config.plan, multiplier)

    def _show_choice(self) -> None:
        suggestion = self.choice.currentData()
        if suggestion is None or self.result is None:
            self.chosen_line.hide()
            return
        self.chosen_line.setPos(np.log10(suggestion.base_lr))
        self.chosen_line.show()
        first = self.result.curve[0]
        lrs = ", ".join(f"{label} {lr / first.multiplier * suggestion.multiplier:.3g}" for label, lr in first.lrs.items())
        self.apply_button.setToolTip(f"Every LR times {suggestion.multiplier:.3g}: {lrs}")

    def _apply(self) -> None:
        plan = self.scaled_plan()
        if plan is not None:
            self.applied.emit(plan)
            self.accept()
