"""A search's trials as the Search dialog shows them: a table (number, state, value, params, seconds),
the value of each trial against its number with the best so far, and one parameter's effect (value
against the parameter chosen in a combo).

Plain rows in (engine.search.trials.TrialRow); plots made once and fed with setData (widgets/plots.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine.search.trials import TrialRow
from widgets.plots import AXIS_COLOUR, TEXT_COLOUR, TRAIN_COLOUR, VAL_COLOUR, Axis
from widgets.row_table import RowTableModel

STATE_BRUSHES = {"complete": TRAIN_COLOUR, "pruned": (150, 150, 150)}  # failed trials have no value to plot
BEST_COLOUR = VAL_COLOUR


def format_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={format_param(value)}" for name, value in params.items())


class TrialTableModel(RowTableModel):
    HEADERS = ("Trial", "State", "Value", "Params", "Seconds")

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row: TrialRow = self._items[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return (str(row.number), row.state, "" if row.value is None else f"{row.value:.4f}",
                    params_text(row.params), "" if row.seconds is None else f"{row.seconds:.1f}")[column]
        if role == Qt.ItemDataRole.ToolTipRole and column in (1, 3):  # a failed trial's reason; long params whole
            return row.error if column == 1 else params_text(row.params)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (0, 2, 4):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def _plot(x_label: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w", axisItems={"bottom": Axis("bottom"), "left": Axis("left")})
    plot.setLabel("bottom", x_label, color=TEXT_COLOUR)
    plot.setLabel("left", "val accuracy", color=TEXT_COLOUR)
    for side in ("bottom", "left"):
        plot.getAxis(side).setPen(pg.mkPen(AXIS_COLOUR, width=1))
        plot.getAxis(side).setTextPen(pg.mkPen(TEXT_COLOUR))
    plot.setMenuEnabled(False)
    plot.setMinimumSize(240, 180)
    return plot


def _values(rows: list[TrialRow]) -> list[TrialRow]:
    return [row for row in rows if row.value is not None and math.isfinite(row.value)]


class SearchResults(QWidget):
    """The table above, the two plots side by side below."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from PySide6.QtWidgets import QHeaderView, QTableView

        self.rows: list[TrialRow] = []
        self.log_params: set[str] = set()  # knobs searched on a log scale: their effect plot's x axis is too
        self.table_model = TrialTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("searchTrialTable")
        self.table.setModel(self.table_model)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.value_plot = _plot("trial")
        self.value_plot.setObjectName("searchValuePlot")
        self.best_curve = self.value_plot.plot(pen=pg.mkPen(BEST_COLOUR, width=1))
        self.value_points = self.value_plot.plot(pen=None, symbol="o", symbolSize=8, symbolPen=None)
        self.effect_plot = _plot("")
        self.effect_plot.setObjectName("searchEffectPlot")
        # PlotDataItems, not ScatterPlotItems: they follow the plot's log x axis
        self.effect_points = self.effect_plot.plot(pen=None, symbol="o", symbolSize=8, symbolPen=None,
                                                   symbolBrush=pg.mkBrush(TRAIN_COLOUR))
        self.param_choice = QComboBox()
        self.param_choice.setObjectName("searchEffectParam")
        self.param_choice.setToolTip("The parameter whose effect the right plot shows: each trial's value "
                                     "against the value it drew.")
        self.param_choice.currentIndexChanged.connect(self._show_effect)
        effect = QVBoxLayout()
        effect_head = QHBoxLayout()
        effect_head.addWidget(QLabel("Effect of"))
        effect_head.addWidget(self.param_choice, 1)
        effect.addLayout(effect_head)
        effect.addWidget(self.effect_plot, 1)
        plots = QHBoxLayout()
        value = QVBoxLayout()
        value.addWidget(QLabel("Value by trial (line: best so far)"))
        value.addWidget(self.value_plot, 1)
        plots.addLayout(value, 1)
        plots.addLayout(effect, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 1)
        layout.addLayout(plots, 1)

    def show_rows(self, rows: list[TrialRow], log_params: set[str]) -> None:
        self.rows, self.log_params = list(rows), set(log_params)
        self.table_model.set_items(self.rows)
        self.table.scrollToBottom()
        self._show_values()
        self._offer_params()
        self._show_effect()

    def _show_values(self) -> None:
        found = _values(self.rows)
        self.value_points.setData(
            x=np.array([row.number for row in found], dtype=float),
            y=np.array([row.value for row in found], dtype=float),
            symbolBrush=[pg.mkBrush(STATE_BRUSHES.get(row.state, TRAIN_COLOUR)) for row in found])
        complete = [row for row in found if row.state == "complete"]
        if not complete:
            self.best_curve.setData([], [])
            return
        best = np.maximum.accumulate(np.array([row.value for row in complete], dtype=float))
        self.best_curve.setData(np.array([row.number for row in complete], dtype=float), best)

    def _offer_params(self) -> None:
        names = list(dict.fromkeys(name for row in self.rows for name in row.params))
        shown = [self.param_choice.itemText(i) for i in range(self.param_choice.count())]
        if names == shown:
            return
        chosen = self.param_choice.currentText()
        self.param_choice.blockSignals(True)
        self.param_choice.clear()
        self.param_choice.addItems(names)
        if chosen in names:
            self.param_choice.setCurrentText(chosen)
        self.param_choice.blockSignals(False)

    def _show_effect(self) -> None:
        name = self.param_choice.currentText()
        found = [row for row in _values(self.rows) if name in row.params]
        values = [row.params[name] for row in found]
        axis = self.effect_plot.getAxis("bottom")
        self.effect_plot.setLabel("bottom", name, color=TEXT_COLOUR)
        if values and all(isinstance(v, str) for v in values):  # a choice: one column per option
            options = sorted(set(values))
            x = np.array([options.index(v) for v in values], dtype=float)
            axis.setTicks([[(i, option) for i, option in enumerate(options)]])
            self.effect_plot.setLogMode(x=False)
        else:
            x = np.array(values, dtype=float)
            axis.setTicks(None)
            self.effect_plot.setLogMode(x=name in self.log_params and bool(len(x)) and bool((x > 0).all()))
        self.effect_points.setData(x=x, y=np.array([row.value for row in found], dtype=float))

    def points_shown(self) -> tuple[int, int]:
        """(points of the value plot, of the effect plot): what a test reads."""
        return tuple(0 if item.xData is None else len(item.xData) for item in (self.value_points, self.effect_points))
