"""The embeddings map: each validation image as a point, coloured by its true class; misclassified
images drawn as crosses. Clicking a point says which image it is."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal

from widgets.plots import distinct_colours

POINT_SIZE = 8
WRONG_SYMBOL = "x"  # a cross reads as "wrong" without a legend entry of its own


class EmbeddingPlot(pg.PlotWidget):
    point_chosen = Signal(str)  # the image's path relative to the dataset root

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("embeddingPlot")
        self.setBackground("w")
        self.setTitle("Penultimate features, 2-D (PCA) — crosses: misclassified", color=(80, 86, 96), size="9pt")
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.setMinimumHeight(120)
        self.legend = self.addLegend(offset=(5, 5), labelTextSize="8pt")
        self.scatter = pg.ScatterPlotItem(size=POINT_SIZE, hoverable=True)
        self.scatter.sigClicked.connect(self._on_clicked)
        self.addItem(self.scatter)
        self._points: list = []

    def show_points(self, points: list, class_names: list[str]) -> None:
        """Points with path, true, pred, x, y; colours follow the class order."""
        self._points = list(points)
        colours = dict(zip(class_names, distinct_colours(len(class_names))))
        # One brush and pen per class, shared by its points, and arrays rather than a dict per spot:
        # a validation set of 10,000 images would otherwise make 20,000 Qt objects on the GUI thread.
        brushes = {name: pg.mkBrush(colour) for name, colour in colours.items()}
        pens = {name: pg.mkPen(colour, width=2) for name, colour in colours.items()}
        unknown, no_pen = pg.mkBrush((0, 0, 0)), pg.mkPen(None)
        wrong = [p.true != p.pred for p in self._points]
        self.scatter.setData(
            x=[p.x for p in self._points], y=[p.y for p in self._points], data=[p.path for p in self._points],
            brush=[brushes.get(p.true, unknown) for p in self._points],
            pen=[pens.get(p.true, no_pen) if w else no_pen for p, w in zip(self._points, wrong)],
            symbol=[WRONG_SYMBOL if w else "o" for w in wrong])
        self.legend.clear()
        for name in class_names:
            self.legend.addItem(pg.ScatterPlotItem(brush=brushes[name], pen=None, size=POINT_SIZE), name)
        if self._points:
            xy = np.array([(p.x, p.y) for p in self._points])
            self.setRange(xRange=(xy[:, 0].min(), xy[:, 0].max()), yRange=(xy[:, 1].min(), xy[:, 1].max()),
                          padding=0.08)

    def clear_points(self) -> None:
        self._points = []
        self.scatter.clear()
        self.legend.clear()

    def point_count(self) -> int:
        return len(self._points)

    def _on_clicked(self, _item, spots, *_) -> None:
        if len(spots):
            self.point_chosen.emit(spots[0].data())
