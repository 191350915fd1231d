"""The embeddings map: each validation image as a point, coloured by its true class; misclassified
images drawn as crosses. Hovering a point names its image; clicking it rings the point and says
which image it is (the view beside the map shows it)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal

from widgets.plots import distinct_colours

POINT_SIZE = 8
RING_SIZE = 18
RING_COLOUR = (20, 20, 20)
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
        self.scatter = pg.ScatterPlotItem(size=POINT_SIZE, hoverable=True, tip=self._tip)
        self.scatter.sigClicked.connect(self._on_clicked)
        self.addItem(self.scatter)
        # The chosen point: a ring drawn over it, so the image beside the map can be found on it.
        self.ring = pg.ScatterPlotItem(size=RING_SIZE, symbol="o", brush=None, pen=pg.mkPen(RING_COLOUR, width=2))
        self.ring.setZValue(1)
        self.addItem(self.ring)
        self._points: list = []
        self._by_path: dict = {}

    def show_points(self, points: list, class_names: list[str]) -> None:
        """Points with path, true, pred, x, y; colours follow the class order."""
        self._points = list(points)
        self._by_path = {p.path: p for p in self._points}
        self.ring.clear()
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
        self._by_path = {}
        self.scatter.clear()
        self.ring.clear()
        self.legend.clear()

    def highlight(self, path: str) -> None:
        """Ring the point of `path` (relative to the dataset root); nothing when it is not shown."""
        point = self._by_path.get(path)
        if point is None:
            self.ring.clear()
        else:
            self.ring.setData(x=[point.x], y=[point.y])

    def highlighted(self) -> tuple[float, float] | None:
        xs, ys = self.ring.getData()
        return (float(xs[0]), float(ys[0])) if len(xs) else None

    def describe(self, path: str) -> str:
        """What hovering a point says: the image, its class, and the prediction when it is wrong."""
        point = self._by_path.get(path)
        if point is None:
            return str(path)
        verdict = "correct" if point.true == point.pred else f"predicted {point.pred}"
        return f"{path}\n{point.true}, {verdict}"

    def _tip(self, x, y, data) -> str:
        return f"{self.describe(data)}\nclick to show it beside the map"

    def point_count(self) -> int:
        return len(self._points)

    def _on_clicked(self, _item, spots, *_) -> None:
        if len(spots):
            path = spots[0].data()
            self.highlight(path)
            self.point_chosen.emit(path)
