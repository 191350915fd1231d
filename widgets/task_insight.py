"""Insight's page for a multi-label or regression run, chosen by its task. Multi-label: the per-label
figures beside the per-label grid, a clicked cell's images in the gallery (Grad-CAM per label).
Regression: predicted against true, the largest residuals in the gallery, a clicked point's image.

The figures are engine.insight.task_views'; this page only lays them out and routes clicks. The
images (TaskImagesPanel) go where the Insight view puts them: a tab of its own."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QSplitter, QStackedWidget, QTableView,
                               QVBoxLayout, QWidget)

from engine.insight.task_views import (CELL_NAMES, label_cell_images, label_grid, largest_residuals, value_images,
                                       worst_label_cell)
from engine.task_figures import TASK_METRICS, format_figure
from widgets.label_grid import LabelGrid
from widgets.label_table import LABEL_TABLE_TIP, PerLabelModel
from widgets.regression_scatter import RegressionScatter
from widgets.task_images import TaskImagesPanel

RESIDUALS_SHOWN = 200  # the gallery's share of a large validation set: its worst images


def summary_text(evaluation, title: str) -> str:
    """'run: multi-label · mAP 0.812 · macro F1 0.7 · micro F1 0.75 on 40 validation images'."""
    figures = " · ".join(format_figure(name, evaluation.figures.get(name)) if evaluation.figures.get(name) is not None
                         else f"{name} —" for name in TASK_METRICS[evaluation.task])
    return (f"{title + ': ' if title else ''}{evaluation.task} · {figures} on {evaluation.images} validation images"
            + (" (thresholds tuned on them for the highest F1)" if evaluation.task == "multi-label" else ""))


class TaskInsightPage(QWidget):
    thumbnails_wanted = Signal(list)  # absolute image paths to decode
    explain_requested = Signal(str, str)  # absolute image path, label
    image_wanted = Signal(str)  # absolute image path

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("taskInsightPage")
        self._evaluation = None
        self._root = Path()
        self._values: list = []
        self.summary = QLabel("")
        self.summary.setObjectName("taskSummaryLabel")
        self.summary.setWordWrap(True)
        self.label_model = PerLabelModel(self)
        self.label_table = QTableView()
        self.label_table.setObjectName("perLabelTable")
        self.label_table.setModel(self.label_model)
        self.label_table.setToolTip(LABEL_TABLE_TIP)
        self.label_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.label_table.verticalHeader().setVisible(False)
        self.label_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.label_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.grid = LabelGrid()
        self.grid.cell_chosen.connect(self.show_label_cell)
        # The two tables hold the same rows: they scroll together.
        for a, b in ((self.label_table, self.grid), (self.grid, self.label_table)):
            a.verticalScrollBar().valueChanged.connect(b.verticalScrollBar().setValue)
        self.scatter = RegressionScatter()
        self.scatter.point_chosen.connect(self._show_point)
        self.images = TaskImagesPanel()
        self.images.thumbnails_wanted.connect(self.thumbnails_wanted)
        self.images.explain_requested.connect(self.explain_requested)
        self.images.image_wanted.connect(self.image_wanted)
        self.images.image_selected.connect(self.scatter.highlight)
        labels = QSplitter(Qt.Orientation.Horizontal)
        labels.addWidget(self.label_table)
        labels.addWidget(self.grid)
        labels.setStretchFactor(0, 1)
        labels.setStretchFactor(1, 0)
        self.views = QStackedWidget()
        self.views.addWidget(labels)
        self.views.addWidget(self.scatter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.views, 1)

    def show_evaluation(self, evaluation, dataset_root: str | Path, title: str = "") -> None:
        """An engine.insight.task_evaluation.TaskEvaluation with its images' outputs."""
        self._evaluation, self._root = evaluation, Path(dataset_root)
        self.show_title(title)
        names = list(evaluation.names)
        self.images.set_task(evaluation.task, names)
        if evaluation.task == "multi-label":
            self.views.setCurrentIndex(0)
            self.label_model.set_per_class(names, evaluation.figures["per_label"])
            grid = label_grid(evaluation)
            self.grid.set_grid(grid)
            first = worst_label_cell(grid)
            if first:
                self.show_label_cell(*first)
        else:
            self.views.setCurrentIndex(1)
            self._values = value_images(evaluation)
            self.scatter.show_points(self._values)
            worst = largest_residuals(self._values, RESIDUALS_SHOWN)
            shown = (f"the {len(worst)} largest of {len(self._values)}" if len(worst) < len(self._values)
                     else f"all {len(worst)}")
            self.images.show_images(worst, self._root, f"Residuals (predicted − true), largest first ({shown} "
                                                       f"validation images); click one to see it and ring its point.")

    def show_title(self, title: str) -> None:
        if self._evaluation is not None:
            self.summary.setText(summary_text(self._evaluation, title))

    def show_label_cell(self, label: str, cell: str) -> None:
        """Fill the gallery with one label's cell, highest loss (that label's) first."""
        if self._evaluation is None:
            return
        images = label_cell_images(self._evaluation, label, cell)
        self.images.show_images(images, self._root, f"{label}, {CELL_NAMES[cell]}: {len(images)} image(s), highest "
                                                    f"loss (this label's) first", label)
        self.grid.select_cell(label, cell)

    def show_preview(self, image: QImage | None, caption: str) -> None:
        self.images.show_preview(image, caption)

    def add_thumbnails(self, images: dict[str, QImage | None]) -> None:
        self.images.add_thumbnails(images)

    def _show_point(self, rel: str) -> None:
        self.images.want_image(str(self._root / rel), self.scatter.describe(rel))
