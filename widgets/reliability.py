"""The Calibration view of Insight: the run's temperature, ECE before and after it, the unknown rule,
and a reliability diagram: each confidence bin's mean confidence against its accuracy, before and
after the temperature, with the diagonal a perfectly calibrated model would lie on.

It shows an engine.insight.reliability.RunCalibration it is given; it reads no file itself.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QWidget

from widgets.plots import TEXT_COLOUR, TRAIN_COLOUR, VAL_COLOUR

DIAGONAL_COLOUR = (150, 156, 166)
BEFORE_COLOUR, AFTER_COLOUR = VAL_COLOUR, TRAIN_COLOUR
EMPTY_TEXT = "Calibration appears here for a single-label run that recorded it."


def calibration_text(calibration) -> str:
    """The figures above the diagram, as run.json records them."""
    recorded = calibration.recorded
    lines = [f"Temperature {recorded.temperature:.3g}, fitted on epoch {recorded.epoch}'s "
             f"{recorded.images or calibration.images} validation images: probabilities are softmax(logits / T)."]
    if recorded.ece_before is not None and recorded.ece_after is not None:
        nll = (f"; NLL {recorded.nll_before:.3f} → {recorded.nll_after:.3f}"
               if recorded.nll_before is not None and recorded.nll_after is not None else "")
        lines.append(f"ECE ({recorded.ece_bins or len(calibration.before)} bins): {recorded.ece_before:.2%} before → "
                     f"{recorded.ece_after:.2%} after{nll}")
    unknown = recorded.unknown or {}
    if isinstance(unknown.get("threshold"), (int, float)) and isinstance(unknown.get("score"), str):
        kept = unknown.get("validation_kept")
        kept_text = f", which keeps {kept:.1%} of the validation images" if isinstance(kept, (int, float)) else ""
        lines.append(f"Unknown: an image whose {unknown['score']} score is below {unknown['threshold']:.4g} is "
                     f"\"none of the classes\"{kept_text}.")
    return "\n".join(lines)


def bin_points(bins) -> tuple[np.ndarray, np.ndarray]:
    """(mean confidence, accuracy) of the bins that hold images."""
    used = [b for b in bins if b.count]
    return (np.array([b.confidence for b in used], dtype=float), np.array([b.accuracy for b in used], dtype=float))


class ReliabilityView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("reliabilityView")
        self.summary = QLabel(EMPTY_TEXT)
        self.summary.setObjectName("calibrationSummaryLabel")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("reliabilityPlot")
        self.plot.setBackground("w")
        self.plot.setToolTip("Each point is one confidence bin: the images whose top probability falls in it, their "
                             "mean confidence (x) against the share of them predicted right (y). Below the diagonal: "
                             "over-confident; above: under-confident.")
        self.plot.setMinimumHeight(120)
        self.plot.setLabel("bottom", "confidence", color=TEXT_COLOUR)
        self.plot.setLabel("left", "accuracy", color=TEXT_COLOUR)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setXRange(0, 1, padding=0.02)
        self.plot.setYRange(0, 1, padding=0.02)
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        # Top left: over-confident bins, the usual case, fall below the diagonal, away from it.
        self.plot.addLegend(offset=(6, 4), labelTextSize="8pt", brush=(255, 255, 255, 210))
        # Made once; show_calibration only sets their data.
        self.plot.plot([0, 1], [0, 1], pen=pg.mkPen(DIAGONAL_COLOUR, width=1, style=Qt.PenStyle.DashLine),
                       name="calibrated")
        self.before = self.plot.plot([], [], pen=pg.mkPen(BEFORE_COLOUR, width=1), symbol="o", symbolSize=7,
                                     symbolBrush=BEFORE_COLOUR, symbolPen=None, name="before")
        self.after = self.plot.plot([], [], pen=pg.mkPen(AFTER_COLOUR, width=2), symbol="s", symbolSize=7,
                                    symbolBrush=AFTER_COLOUR, symbolPen=None, name="after (logits / T)")
        # Side by side: Insight's lower half is short, and the diagram wants its height.
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary, 2)
        layout.addWidget(self.plot, 3)

    def show_calibration(self, calibration, why_none: str = "") -> None:
        """An engine.insight.reliability.RunCalibration, or None and why there is none."""
        if calibration is None:
            self.before.setData([], [])
            self.after.setData([], [])
            self.summary.setText(why_none or EMPTY_TEXT)
            return
        self.before.setData(*bin_points(calibration.before))
        self.after.setData(*bin_points(calibration.after))
        self.summary.setText(calibration_text(calibration))

    def curve_points(self) -> dict[str, tuple[list[float], list[float]]]:
        """What the diagram draws, per curve (for tests and screenshots)."""
        return {name: tuple(list(v) for v in curve.getData()) if curve.getData()[0] is not None else ([], [])
                for name, curve in (("before", self.before), ("after", self.after))}
