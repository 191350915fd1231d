"""A regression run's predicted values against the true ones: one point per validation image, the
diagonal where a perfect model's points would lie. Hovering a point names its image; clicking it
rings the point and asks for the image."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal

from widgets.embedding_plot import POINT_SIZE, RING_COLOUR, RING_SIZE

POINT_COLOUR = (40, 110, 190, 170)
DIAGONAL_COLOUR = (150, 150, 150)


class RegressionScatter(pg.PlotWidget):
    point_chosen = Signal(str)  # the image's path relative to the dataset root

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("regressionScatter")
        self.setBackground("w")
        # No title: the axes say it, and a small window needs the height.
        self.setToolTip("Each validation image: its true value across, its predicted value up; on the dashed line "
                        "predicted = true. Click a point to see its image.")
        self.setLabel("bottom", "true value")
        self.setLabel("left", "predicted value")
        self.setMinimumHeight(120)
        self.diagonal = pg.PlotDataItem(pen=pg.mkPen(DIAGONAL_COLOUR, width=1, style=Qt.PenStyle.DashLine))
        self.addItem(self.diagonal)
        self.scatter = pg.ScatterPlotItem(size=POINT_SIZE, hoverable=True, tip=self._tip, brush=pg.mkBrush(POINT_COLOUR),
                                          pen=pg.mkPen(None))
        self.scatter.sigClicked.connect(self._on_clicked)
        self.addItem(self.scatter)
        self.ring = pg.ScatterPlotItem(size=RING_SIZE, symbol="o", brush=None, pen=pg.mkPen(RING_COLOUR, width=2))
        self.ring.setZValue(1)
        self.addItem(self.ring)
        self._by_path: dict = {}

    def show_points(self, images: list) -> None:
        """engine.insight.task_views.ValueImage rows: x the true value, y the predicted one."""
        self._by_path = {image.path: image for image in images if image.path}
        self.ring.clear()
        self.scatter.setData(x=[i.actual for i in images], y=[i.predicted for i in images],
                             data=[i.path for i in images])
        values = [v for i in images for v in (i.actual, i.predicted)]
        if values:
            low, high = min(values), max(values)
            self.diagonal.setData([low, high], [low, high])
            self.setRange(xRange=(low, high), yRange=(low, high), padding=0.06)
        else:
            self.diagonal.clear()

    def clear_points(self) -> None:
        self.show_points([])

    def points(self) -> list[tuple[float, float, str]]:
        """(true, predicted, path) of each point, as drawn."""
        xs, ys = self.scatter.getData()
        return [(float(x), float(y), spot.data()) for x, y, spot in zip(xs, ys, self.scatter.points())]

    def highlight(self, path: str) -> None:
        """Ring the point of `path`; nothing when it is not shown."""
        image = self._by_path.get(path)
        if image is None:
            self.ring.clear()
        else:
            self.ring.setData(x=[image.actual], y=[image.predicted])

    def describe(self, path: str) -> str:
        image = self._by_path.get(path)
        if image is None:
            return str(path)
        return f"{path}\ntrue {image.actual:.4g}, predicted {image.predicted:.4g} (residual {image.residual:+.3g})"

    def _tip(self, x, y, data) -> str:
        return f"{self.describe(data)}\nclick to show it"

    def _on_clicked(self, _item, spots, *_) -> None:
        if len(spots) and spots[0].data():
            path = spots[0].data()
            self.highlight(path)
            self.point_chosen.emit(path)
