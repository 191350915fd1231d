"""Live training plots: loss, accuracy and every LR group's learning rate.

Curves are created once and fed with `setData` from growing numpy buffers; clip-to-view and peak
downsampling keep a 100,000-point run smooth. The x axis is in epochs (fractional for steps).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

AXIS_COLOUR = (150, 156, 166)
TEXT_COLOUR = (80, 86, 96)
TRAIN_COLOUR = (52, 120, 246)
VAL_COLOUR = (230, 120, 30)
GROUP_COLOURS = [(52, 120, 246), (230, 120, 30), (46, 160, 67), (200, 60, 60), (140, 90, 200),
                 (120, 120, 120), (20, 170, 170), (200, 170, 0)]


class Series:
    """A growing (x, y) buffer that doubles its capacity, so appending stays O(1) amortised."""

    def __init__(self, capacity: int = 1024):
        self._x = np.empty(capacity)
        self._y = np.empty(capacity)
        self.size = 0

    def append(self, x: float, y: float) -> None:
        if self.size == len(self._x):
            self._x = np.resize(self._x, 2 * self.size)
            self._y = np.resize(self._y, 2 * self.size)
        self._x[self.size] = x
        self._y[self.size] = y
        self.size += 1

    @property
    def x(self) -> np.ndarray:
        return self._x[: self.size]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.size]


def _plot(object_name: str, title: str, y_label: str, log_y: bool = False) -> pg.PlotWidget:
    widget = pg.PlotWidget(background="w")
    widget.setObjectName(object_name)
    widget.setTitle(title, color="#333", size="10pt")
    widget.setLabel("bottom", "epoch")
    widget.setLabel("left", y_label)
    # No grid: its lines cost 50-80 ms per redraw in Qt's software painter, which would stall
    # the window several times a second during training.
    for side in ("left", "bottom"):
        axis = widget.getAxis(side)
        axis.setPen(pg.mkPen(AXIS_COLOUR))
        axis.setTextPen(pg.mkPen(TEXT_COLOUR))
    widget.setLogMode(y=log_y)
    widget.getAxis("left").enableAutoSIPrefix(False)  # show 1e-3, not "1 (x0.001)"
    item = widget.getPlotItem()
    item.setClipToView(True)
    item.setDownsampling(auto=True, mode="peak")
    legend = widget.addLegend(offset=(-10, 10), labelTextSize="8pt", colCount=2 if log_y else 1)
    legend.setBrush(pg.mkBrush(255, 255, 255, 215))  # readable over the curves
    widget.setMinimumHeight(140)
    return widget


class TrainingPlots(QWidget):
    def __init__(self, parent=None, smoothing: float = 0.9, refresh_ms: int = 250):
        super().__init__(parent)
        self.smoothing = smoothing
        # Points arrive up to 20 times a second; redrawing three plots costs tens of milliseconds
        # on a slow machine, so curves are redrawn at most every refresh_ms.
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(refresh_ms)
        self._refresh_timer.timeout.connect(self.redraw)
        self.loss_plot = _plot("lossPlot", "Loss", "cross-entropy")
        self.accuracy_plot = _plot("accuracyPlot", "Accuracy", "top-1")
        self.lr_plot = _plot("lrPlot", "Learning rate per group", "LR", log_y=True)
        self.accuracy_plot.setYRange(0, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for plot in (self.loss_plot, self.accuracy_plot, self.lr_plot):
            layout.addWidget(plot)
        pen = lambda colour, width=1, style=None: pg.mkPen(colour, width=width, style=style)  # noqa: E731
        self._curves = {
            "train_loss_raw": self.loss_plot.plot(pen=pen(TRAIN_COLOUR + (60,))),
            "train_loss": self.loss_plot.plot(pen=pen(TRAIN_COLOUR, 2), name="train (smoothed)"),
            "val_loss": self.loss_plot.plot(pen=pen(VAL_COLOUR, 2), symbol="o", symbolSize=5,
                                            symbolBrush=VAL_COLOUR, name="validation"),
            "train_acc": self.accuracy_plot.plot(pen=pen(TRAIN_COLOUR, 2), symbol="o", symbolSize=5,
                                                 symbolBrush=TRAIN_COLOUR, name="train"),
            "val_acc": self.accuracy_plot.plot(pen=pen(VAL_COLOUR, 2), symbol="o", symbolSize=5,
                                               symbolBrush=VAL_COLOUR, name="validation"),
        }
        self._lr_curves: dict[str, pg.PlotDataItem] = {}
        self.clear()

    def clear(self) -> None:
        self._refresh_timer.stop()
        self._series = {name: Series() for name in ("train_loss_raw", "train_loss", "val_loss", "train_acc", "val_acc")}
        self._lr_series: dict[str, Series] = {}
        self._ema = None
        for curve in self._curves.values():
            curve.setData([], [])
        for curve in self._lr_curves.values():
            self.lr_plot.removeItem(curve)
        self._lr_curves.clear()

    def point_count(self) -> int:
        return self._series["train_loss_raw"].size

    def add_batch(self, event: dict) -> None:
        x = event["epoch"] - 1 + event["step"] / max(1, event["steps"])
        loss = event["loss"]
        if np.isfinite(loss):
            self._ema = loss if self._ema is None else self.smoothing * self._ema + (1 - self.smoothing) * loss
            self._series["train_loss_raw"].append(x, loss)
            self._series["train_loss"].append(x, self._ema)
        for label, lr in event["lrs"].items():
            self._lr_series_for(label).append(x, lr)
        self._schedule_redraw()

    def add_epoch(self, event: dict) -> None:
        x = float(event["epoch"])
        self._series["train_acc"].append(x, event["train_accuracy"])
        if event.get("val_loss") is not None and np.isfinite(event["val_loss"]):
            self._series["val_loss"].append(x, event["val_loss"])
            self._series["val_acc"].append(x, event["val_accuracy"])
        self.redraw()  # epochs are rare: show them at once

    def _lr_series_for(self, label: str) -> Series:
        if label not in self._lr_series:
            colour = GROUP_COLOURS[len(self._lr_series) % len(GROUP_COLOURS)]
            self._lr_series[label] = Series()
            self._lr_curves[label] = self.lr_plot.plot(pen=pg.mkPen(colour, width=2), name=label)
        return self._lr_series[label]

    def _schedule_redraw(self) -> None:
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def redraw(self) -> None:
        self._refresh_timer.stop()
        for name, series in self._series.items():
            self._curves[name].setData(series.x, series.y)
        for label, curve in self._lr_curves.items():
            series = self._lr_series[label]
            curve.setData(series.x, series.y)
