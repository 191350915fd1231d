"""Live training plots: loss, the task's score (accuracy; mAP and macro F1; R²: widgets/score_axes.py),
every LR group's learning rate, and (on demand) each module's update ratio.

Curves are created once and fed with `setData` from growing numpy buffers; clip-to-view and peak
downsampling keep a 100,000-point run smooth. The x axis is in epochs (fractional for steps).
Legends sit in the plot's layout, right of the data, so they never cover a curve however many
groups there are; every curve of a plot has its own colour. Before Start the LR plot shows the
planned LR of every group (engine.plan.optimization.schedule_preview), dashed; the real curves draw
over it as training runs, and a line under the plot says what trains in each gradual phase.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QFont, QFontMetricsF
from PySide6.QtWidgets import QCheckBox, QLabel, QSizePolicy, QVBoxLayout, QWidget

from engine.events import BatchEvent, EpochEvent
from widgets.score_axes import CURVES, score_axis, score_points

AXIS_COLOUR = (150, 156, 166)
TEXT_COLOUR = (80, 86, 96)
TRAIN_COLOUR = (52, 120, 246)
VAL_COLOUR = (230, 120, 30)
# Tableau 10: distinct on white and for most colour-blind people; more curves get generated hues.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
MAX_RATIO_CURVES = 12  # more modules than this: only the first level (names without a dot)
LEGEND_LABEL_CHARS = 22  # longer names are elided in the legend; the tooltip has them whole
LR_DEFAULT_RANGE = (-5.0, -1.0)  # log10 y range shown before the first LR arrives: 1e-5 .. 1e-1
RATIO_DEFAULT_RANGE = (-6.0, -1.0)
SECOND_COLOUR = (44, 160, 44)  # a task's second validation figure (multi-label's macro F1)
PLANNED_LEGEND = "planned (dashed)"
RAW_ALPHA = 110  # each step's loss: visible, yet under the smoothed line
LEFT_AXIS_WIDTH = 64  # room for the label and a tick like "1.05e-3"


def distinct_colours(n: int) -> list[tuple[int, int, int]]:
    """n colours, no two equal: the palette while it lasts, then hues evenly spaced around the
    circle, neighbours alternating in brightness so adjacent hues still differ."""
    if n <= len(PALETTE):
        return PALETTE[:n]
    colours: list[tuple[int, int, int]] = []
    seen = set()
    for i in range(n):
        value = 0.88 if i % 2 == 0 else 0.62
        while True:
            c = QColor.fromHsvF(i / n, 0.85, value)
            rgb = (c.red(), c.green(), c.blue())
            if rgb not in seen:
                break
            value -= 1 / 255  # only ever needed for hundreds of curves, where hues round together
        seen.add(rgb)
        colours.append(rgb)
    return colours


def format_tick(value: float) -> str:
    """1e-3, 2.5e-4, 0.05, 1.05e-3: short, and exact enough that neighbouring ticks differ."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    if -2 <= exponent <= 3:
        return f"{value:.4g}"
    mantissa = float(f"{value / 10 ** exponent:.4g}")
    if abs(mantissa) >= 10:  # rounding carried over: 9.99995e-4 -> 1e-3
        mantissa /= 10
        exponent += 1
    return f"{mantissa:g}e{exponent}"


def log_ticks(lo: float, hi: float, pixels: float, min_gap: float) -> list[float]:
    """Tick positions (log10 units) for a log axis spanning lo..hi over `pixels`: the densest of
    decades, 1-2-5 mantissas, 1..9 mantissas or (for a range narrower than a decade) plain
    nice steps, whose neighbouring labels are at least min_gap pixels apart."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo or pixels <= 0:
        return []
    per_decade = pixels / (hi - lo)
    candidates: list[np.ndarray] = []
    first, last = math.floor(lo), math.ceil(hi)
    for every in (1, 2, 3, 5, 10, 20, 50, 100):
        if (last - first) / every <= 60:
            candidates.append(np.arange(math.ceil(lo / every) * every, hi + 1e-9, every, dtype=float))
    decades = np.arange(first, last + 1, dtype=float)[:, None]
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        if last - first <= 30:
            candidates.append((decades + np.log10(mantissas)[None, :]).ravel())
    lo_v, hi_v = 10.0 ** lo, 10.0 ** hi
    span = hi_v - lo_v
    if span > 0 and hi - lo < 1.5:  # narrow: steps in value space, e.g. 1.0e-3, 1.1e-3, 1.2e-3
        top = 10.0 ** math.floor(math.log10(span))
        for step in (top, top / 2, top / 5, top / 10):  # at most 3 significant digits
            start = math.ceil(lo_v / step) * step
            values = start + step * np.arange(int((hi_v - start) / step) + 1)
            values = values[(values > 0) & (values <= hi_v * (1 + 1e-12))]
            candidates.append(np.log10(values))
    best: np.ndarray = np.array([])
    for ticks in candidates:
        ticks = ticks[(ticks >= lo - 1e-9) & (ticks <= hi + 1e-9)]
        if len(ticks) > 1 and np.diff(ticks).min() * per_decade < min_gap:
            continue  # labels would overlap
        if len(ticks) > len(best):
            best = ticks
    return best.tolist()


class Axis(pg.AxisItem):
    """No SI-prefix rescaling ("epoch (x0.001)"), and on a log axis labels that never overlap."""

    def __init__(self, orientation: str):
        super().__init__(orientation)
        self.enableAutoSIPrefix(False)

    def logTickValues(self, minVal, maxVal, size, stdTicks):  # noqa: N802 (pyqtgraph's override)
        font = self.style.get("tickFont") or QFont()
        gap = 1.6 * QFontMetricsF(font).height()
        return [(None, log_ticks(minVal, maxVal, size, gap))]  # one level: nothing drawn on top

    def logTickStrings(self, values, scale, spacing):  # noqa: N802
        return [format_tick(10.0 ** v * scale) for v in values]


class SideLegend(pg.LegendItem):
    """A legend in the plot's own layout, right of the view box: it never covers data. With more
    entries than fit under each other it adds columns, and shortens long names to keep it narrow."""

    def __init__(self, plot_item: pg.PlotItem):
        super().__init__(labelTextSize="8pt", labelTextColor=TEXT_COLOUR, frame=False, verSpacing=-6)
        self.changed = lambda: None  # called when its natural width may have changed
        self._plot_item = plot_item
        self._names: list[str] = []
        self._relayout_due = False
        # As tall as its entries but never taller than the view box: it must not push the x axis
        # out of the plot; fit_columns adds a column instead.
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Maximum)
        self.setMinimumHeight(0)
        plot_item.layout.addItem(self, 2, 3)  # the view box's row; column 2 is the hidden right axis
        plot_item.layout.setAlignment(self, Qt.AlignmentFlag.AlignTop)
        plot_item.layout.setColumnSpacing(2, 8)  # a gap between the data and the legend
        plot_item.vb.sigResized.connect(self.fit_columns)

    def add(self, curve: pg.PlotDataItem, name: str) -> None:
        self._names.append(name)
        self.addItem(curve, self._shown(name))
        self._relayout_soon()

    def remove(self, curve: pg.PlotDataItem) -> None:
        for index, (sample, _) in enumerate(self.items):
            if sample.item is curve:
                del self._names[index]
                self.removeItem(curve)
                self._relayout_soon()
                return

    def _relayout_soon(self) -> None:
        """Entries come and go together (a run's groups at its first batch, all of them at a clear): the
        columns and the plots' widths are fitted once for all, a turn of the event loop later (once per
        entry held the window 30-40 ms)."""
        if not self._relayout_due:
            self._relayout_due = True
            QTimer.singleShot(0, self, self._relayout)

    def _relayout(self) -> None:
        self._relayout_due = False
        self.fit_columns()
        self.changed()

    def updateSize(self):  # noqa: N802 (pyqtgraph's override)
        # pyqtgraph's version sets a geometry at (0, 0); in a layout the size hint is what counts.
        self.updateGeometry()

    def fit_columns(self, *_) -> None:
        if not self.items:
            return
        row_height = max(1.0, self.items[0][1].effectiveSizeHint(Qt.SizeHint.PreferredSize).height() - 6)
        rows = max(1, int(self._plot_item.vb.height() // row_height))
        columns = min(4, math.ceil(len(self.items) / rows))
        if columns != self.columnCount:
            self.setColumnCount(columns)
            for (_, label), name in zip(self.items, self._names):
                label.setText(self._shown(name))
            self.changed()

    def _shown(self, name: str) -> str:
        limit = LEGEND_LABEL_CHARS if self.columnCount == 1 else LEGEND_LABEL_CHARS // 2
        return html.escape(name if len(name) <= limit else name[: limit - 1] + "…")

    def natural_width(self) -> float:
        return self.layout.effectiveSizeHint(Qt.SizeHint.PreferredSize).width() if self.items else 0.0

    def entry_names(self) -> list[str]:
        return list(self._names)


def _plot(object_name: str, title: str, y_label: str, log_y: bool = False) -> pg.PlotWidget:
    widget = pg.PlotWidget(background="w", axisItems={"left": Axis("left"), "bottom": Axis("bottom")})
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
    widget.getAxis("left").setWidth(LEFT_AXIS_WIDTH)  # the same in every plot: their epochs line up
    widget.setLogMode(y=log_y)
    item = widget.getPlotItem()
    item.setClipToView(True)
    item.setDownsampling(auto=True, mode="peak")
    widget.legend = SideLegend(item)
    widget.setMinimumHeight(140)
    return widget


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


class DebiasedEma:
    """An exponential moving average with Adam's bias correction (as TensorBoard smooths): the
    average of the values so far, weighted `smoothing`^age, divided by the weights' sum. Started
    at the first value instead, it would keep that value's weight for dozens of steps and lag far
    above a falling loss; started at 0 uncorrected, it would sit far below it."""

    def __init__(self, smoothing: float):
        self.smoothing = smoothing
        self._biased = 0.0
        self._weight = 0.0  # 1 - smoothing^n: the weights' sum after n values

    def add(self, value: float) -> float:
        """Take a value; the smoothed value so far."""
        self._biased = self.smoothing * self._biased + (1 - self.smoothing) * value
        self._weight = self.smoothing * self._weight + (1 - self.smoothing)
        return self._biased / self._weight


class _CurveSet:
    """One curve per name on a log plot, each a distinct colour, listed in the side legend and
    the plot's tooltip. Curves are made when a name first has a value, and kept until clear()."""

    def __init__(self, plot: pg.PlotWidget, default_range: tuple[float, float], intro: str):
        self.plot = plot
        self.default_range = default_range
        self.intro = intro
        self.series: dict[str, Series] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.clear()

    def clear(self) -> None:
        for curve in self.curves.values():
            self.plot.legend.remove(curve)
            self.plot.removeItem(curve)
        self.series.clear()
        self.curves.clear()
        # A log axis with no data spans 1..10 and would label 2..9: show a plausible range until
        # the first value, then follow the data.
        self.plot.setYRange(*self.default_range, padding=0)
        self._awaiting_data = True
        self._update_tooltip()

    def append(self, name: str, x: float, y: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = Series()
            self.curves[name] = curve = self.plot.plot(pen=pg.mkPen(PALETTE[0], width=1))
            self.plot.legend.add(curve, name)
            self._recolour()
        series.append(x, y)
        if self._awaiting_data:
            self._awaiting_data = False
            self.plot.enableAutoRange(axis="y")

    def redraw(self) -> None:
        for name, curve in self.curves.items():
            curve.setData(self.series[name].x, self.series[name].y)

    def colour(self, name: str) -> tuple[int, int, int]:
        return self.curves[name].opts["pen"].color().getRgb()[:3]

    def _recolour(self) -> None:
        for curve, colour in zip(self.curves.values(), distinct_colours(len(self.curves))):
            curve.setPen(pg.mkPen(colour, width=1))
        self.plot.legend.update()
        self._update_tooltip()

    def _update_tooltip(self) -> None:
        rows = [f'<span style="color:#{r:02x}{g:02x}{b:02x}">&#9632;</span> {html.escape(name)}'
                for name, (r, g, b) in ((n, self.colour(n)) for n in self.curves)]
        self.plot.setToolTip("<br>".join([self.intro] + rows))


def phases_text(schedule: list[dict]) -> str:
    """What trains in each phase of a gradual run, from schedule_preview's entries ("" for one phase)."""
    phases: list[tuple[int, list[str]]] = []  # (first epoch, modules that train)
    for entry in schedule:
        if not phases or entry["trainable"] != phases[-1][1]:
            phases.append((entry["epoch"], entry["trainable"]))
    if len(phases) < 2:
        return ""
    parts, before = [], []
    for i, (first, trainable) in enumerate(phases):
        last = phases[i + 1][0] - 1 if i + 1 < len(phases) else schedule[-1]["epoch"]
        span = f"epoch {first}" if last == first else f"epochs {first}–{last}"
        added = [m for m in trainable if m not in before]
        parts.append(f"{span}: {', '.join(trainable) if i == 0 else '+ ' + ', '.join(added)}")
        before = trainable
    return "Planned phases · " + " · ".join(parts)


class TrainingPlots(QWidget):
    def __init__(self, parent=None, smoothing: float = 0.9, refresh_ms: int = 250):
        super().__init__(parent)
        self.smoothing = smoothing
        # Points arrive up to 20 times a second; redrawing the plots costs tens of milliseconds
        # on a slow machine, so curves are redrawn at most every refresh_ms.
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(refresh_ms)
        self._refresh_timer.timeout.connect(self.redraw)
        self.loss_plot = _plot("lossPlot", "Loss", "cross-entropy")
        self.accuracy_plot = _plot("accuracyPlot", "Accuracy", "top-1")
        self.lr_plot = _plot("lrPlot", "Learning rate per group", "LR", log_y=True)
        self.update_ratio_plot = _plot("updateRatioPlot", "Update ratio per module", "update ratio", log_y=True)
        self.update_ratio_plot.setVisible(False)
        self.update_ratio_toggle = QCheckBox("Show update ratio per module")
        self.update_ratio_toggle.setObjectName("updateRatioToggle")
        self.update_ratio_toggle.setToolTip(
            "How far each optimizer step moves a module's weights, relative to their size "
            "(sampled about twice a second; needs telemetry, which is on by default).")
        self.update_ratio_toggle.toggled.connect(self.set_update_ratio_visible)
        self.accuracy_plot.setYRange(0, 1)
        self.phases_label = QLabel("")
        self.phases_label.setObjectName("plannedPhasesLabel")
        self.phases_label.setWordWrap(True)
        self.phases_label.setToolTip("What trains in each phase of the planned gradual unfreezing.")
        self.phases_label.hide()
        self._planned: dict[str, pg.PlotDataItem] = {}  # group -> its planned LR per epoch (dashed)
        # The legend's one entry for every dashed line (each has its group's colour); not plotted itself.
        self._planned_key = pg.PlotDataItem(pen=pg.mkPen(TEXT_COLOUR, width=1, style=Qt.PenStyle.DashLine))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for plot in (self.loss_plot, self.accuracy_plot, self.lr_plot):
            layout.addWidget(plot)
        layout.addWidget(self.phases_label)
        layout.addWidget(self.update_ratio_plot)
        layout.addWidget(self.update_ratio_toggle)
        pen = lambda colour, width=1, style=None: pg.mkPen(colour, width=width, style=style)  # noqa: E731
        self._curves = {
            # Every step's loss stays visible under the smoothed line: smoothing hides spikes.
            # (a line, not dots: 100,000 symbols would stall the window)
            "train_loss_raw": self.loss_plot.plot(pen=pen(TRAIN_COLOUR + (RAW_ALPHA,))),
            "train_loss": self.loss_plot.plot(pen=pen(TRAIN_COLOUR, 2)),
            "val_loss": self.loss_plot.plot(pen=pen(VAL_COLOUR, 2), symbol="o", symbolSize=5,
                                            symbolBrush=VAL_COLOUR),
            "train_acc": self.accuracy_plot.plot(pen=pen(TRAIN_COLOUR, 2), symbol="o", symbolSize=5,
                                                 symbolBrush=TRAIN_COLOUR),
            "val_acc": self.accuracy_plot.plot(pen=pen(VAL_COLOUR, 2), symbol="o", symbolSize=5,
                                               symbolBrush=VAL_COLOUR),
            "val_second": self.accuracy_plot.plot(pen=pen(SECOND_COLOUR, 2), symbol="t", symbolSize=6,
                                                  symbolBrush=SECOND_COLOUR),
        }
        self.loss_plot.legend.add(self._curves["train_loss_raw"], "train (each step)")
        self.loss_plot.legend.add(self._curves["train_loss"], "train (smoothed)")
        self.loss_plot.legend.add(self._curves["val_loss"], "validation")
        self.score_task = ""  # the task the score plot is labelled for (_show_score_axis)
        self._lr = _CurveSet(self.lr_plot, LR_DEFAULT_RANGE, "Learning rate of each parameter group (log scale)")
        for plot in self._plots():
            plot.legend.changed = self._align_legends
        self._ratios = _CurveSet(
            self.update_ratio_plot, RATIO_DEFAULT_RANGE,
            f"‖Δθ‖ / ‖θ‖ of each module on sampled steps (log scale).<br>Modules that did not move "
            f"(frozen: ratio exactly 0) are not drawn: a log axis cannot show 0.<br>With more than "
            f"{MAX_RATIO_CURVES} modules, only the first level is shown.")
        self.clear()
        self._align_legends()

    # Names kept for the window's tests: one Series per LR group.
    @property
    def _lr_series(self) -> dict[str, Series]:
        return self._lr.series

    @property
    def _lr_curves(self) -> dict[str, pg.PlotDataItem]:
        return self._lr.curves

    @property
    def update_ratio_series(self) -> dict[str, Series]:
        return self._ratios.series

    def clear(self) -> None:
        self._refresh_timer.stop()
        if self._is_clear():  # Continue clears at launch and again to show the earlier epochs: once is enough
            return
        self._series = {name: Series() for name in ("train_loss_raw", "train_loss", "val_loss", *CURVES)}
        self._loss_ema = DebiasedEma(self.smoothing)
        for curve in self._curves.values():
            curve.setData([], [])
        self._show_score_axis("single-label")  # until a run's first epoch says its task
        self._lr.clear()
        self._ratios.clear()
        if self._planned:  # the planned curves stay: the y range follows them
            self.lr_plot.enableAutoRange(axis="y")

    def _is_clear(self) -> bool:
        return (self.score_task == "single-label" and not any(series.size for series in self._series.values())
                and not self._lr.curves and not self._ratios.curves)

    def show_planned(self, schedule: list[dict]) -> None:
        """The planned LR of every group at the end of each epoch (schedule_preview's entries, the
        moment metrics.jsonl records), dashed and under the real curves; [] shows none."""
        for curve in self._planned.values():
            self.lr_plot.removeItem(curve)
        if self._planned:
            self.lr_plot.legend.remove(self._planned_key)
        self._planned = {}
        names = list(dict.fromkeys(label for entry in schedule for label in entry["lrs"]))
        for name, colour in zip(names, distinct_colours(len(names))):
            points = [(e["epoch"], e["lrs"][name]) for e in schedule if e["lrs"].get(name, 0.0) > 0]  # log axis
            curve = self.lr_plot.plot(pen=pg.mkPen(colour, width=1, style=Qt.PenStyle.DashLine))
            curve.setZValue(-1)  # the real curve draws over it
            curve.setData(np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float))
            self._planned[name] = curve
        if self._planned:
            self.lr_plot.legend.add(self._planned_key, PLANNED_LEGEND)
            self.lr_plot.enableAutoRange(axis="y")
        text = phases_text(schedule)
        self.phases_label.setText(text)
        self.phases_label.setVisible(bool(text))

    def planned_curves(self) -> dict[str, pg.PlotDataItem]:
        return dict(self._planned)

    def _plots(self) -> list[pg.PlotWidget]:
        return [self.loss_plot, self.accuracy_plot, self.lr_plot, self.update_ratio_plot]

    def _align_legends(self) -> None:
        """Every shown plot's legend as wide as the widest, so the plots' epochs line up."""
        shown = [plot for plot in self._plots() if not plot.isHidden()]
        width = max((plot.legend.natural_width() for plot in shown), default=0.0)
        for plot in shown:
            plot.legend.setMinimumWidth(width)
            plot.legend.setMaximumWidth(width)

    def point_count(self) -> int:
        return self._series["train_loss_raw"].size

    def add_batch(self, event: BatchEvent) -> None:
        x = event.epoch - 1 + event.step / max(1, event.steps)
        loss = event.loss
        if math.isfinite(loss):
            self._series["train_loss_raw"].append(x, loss)
            self._series["train_loss"].append(x, self._loss_ema.add(loss))
        for label, lr in event.lrs.items():
            if lr > 0 and math.isfinite(lr):  # a warm-up's LR of 0 has no place on a log axis
                self._lr.append(label, x, lr)
        if event.layers:
            for name in _ratio_modules(event.layers):
                ratio = event.layers[name].update_ratio
                if ratio > 0 and math.isfinite(ratio):  # 0 (frozen) cannot go on a log axis: skipped
                    self._ratios.append(name, x, ratio)
        self._schedule_redraw()

    def add_epoch(self, event: EpochEvent) -> None:
        self._append_epoch(event)
        self.redraw()  # epochs are rare: show them at once

    def show_history(self, events: list[tuple[BatchEvent, EpochEvent]]) -> None:
        """A past run's curves from its recorded epochs, drawn once."""
        self.clear()
        for batch, epoch in events:
            self.add_batch(batch)
            self._append_epoch(epoch)
        self.redraw()

    def _append_epoch(self, event: EpochEvent) -> None:
        x = float(event.epoch)
        self._show_score_axis(event.task)
        if event.val_loss is not None and math.isfinite(event.val_loss):
            self._series["val_loss"].append(x, event.val_loss)
        for name, value in score_points(event).items():
            self._series[name].append(x, value)

    def _show_score_axis(self, task: str) -> None:
        """Title, axis and legend of the score plot for `task` (a run's epochs are all of one task)."""
        if task == self.score_task:
            return
        self.score_task = task
        axis = score_axis(task)
        self.accuracy_plot.setTitle(axis.title, color="#333", size="10pt")
        self.accuracy_plot.setLabel("left", axis.y_label)
        self.accuracy_plot.setToolTip(axis.tip)
        if axis.y_range is None:
            self.accuracy_plot.enableAutoRange(axis="y")
        else:
            self.accuracy_plot.setYRange(*axis.y_range)
        legend = self.accuracy_plot.legend
        for name, shown in zip(CURVES, axis.legends):
            curve = self._curves[name]
            legend.remove(curve)  # a curve not in the legend is left as it is
            curve.setVisible(shown is not None)
            if shown is not None:
                legend.add(curve, shown)

    def set_update_ratio_visible(self, visible: bool) -> None:
        self.update_ratio_plot.setVisible(visible)
        self._align_legends()
        if self.update_ratio_toggle.isChecked() != visible:
            self.update_ratio_toggle.setChecked(visible)  # re-enters once, then is equal
        if visible:
            self._ratios.redraw()

    def update_ratio_visible(self) -> bool:
        return not self.update_ratio_plot.isHidden()

    def _schedule_redraw(self) -> None:
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def redraw(self) -> None:
        self._refresh_timer.stop()
        for name, series in self._series.items():
            self._curves[name].setData(series.x, series.y)
        self._lr.redraw()
        if self.update_ratio_visible():  # hidden: nothing to paint; shown again, it catches up
            self._ratios.redraw()


def _ratio_modules(layers: dict) -> list[str]:
    """At most MAX_RATIO_CURVES modules: all if they fit, else the first level (no dot)."""
    names = list(layers)
    if len(names) > MAX_RATIO_CURVES:
        names = [name for name in names if "." not in name]
    return names[:MAX_RATIO_CURVES]
