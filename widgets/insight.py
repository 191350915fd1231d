"""The Insight tab: what the model learned and where it fails, for one run.

The confusion matrix (a heat map with counts), per-class precision/recall/F1, the most-confused
pairs, and four views below: the gallery of the clicked cell (with a Grad-CAM overlay on demand),
the embeddings map with the clicked point's image beside it, "Try an image", and the calibration
(widgets/reliability.py). It shows what it is given (an evaluation, embedding
points, images made elsewhere) and asks for the rest through signals; it reads no file itself. A
multi-label or regression run shows its own page instead (widgets.task_insight) and its images' tab.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (QAbstractItemView, QGridLayout, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QSplitter, QStackedWidget, QTableView, QTabWidget, QVBoxLayout, QWidget)

from widgets.confusion import ConfusionMatrixModel, PerClassModel, VerticalLabel, confused_pairs_text
from widgets.embedding_plot import EmbeddingPlot
from widgets.gallery import GalleryModel, GalleryView, follow_moves
from widgets.reliability import ReliabilityView
from widgets.suspects_view import MendActions, class_of, same_folder
from widgets.task_insight import TaskInsightPage
from widgets.try_image import OVERLAY_SIDE, TryImagePanel, image_files, show_image

CELL_SIDE = 34
ROW_TITLE_CHARACTERS = 16
MIN_STRETCHED_CELL = 22  # a few classes' cells shrink to this before the matrix scrolls
STRETCH_CLASSES = 10
EMPTY_TEXT = "Insight appears here when a run finishes, or when you select a past run in Runs."


def _table(name: str, model, tip: str) -> QTableView:
    view = QTableView()
    view.setObjectName(name)
    view.setModel(model)
    view.setToolTip(tip)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    return view


class InsightView(QWidget):
    thumbnails_wanted = Signal(list)  # absolute image paths to decode
    explain_requested = Signal(str)  # absolute image path: its Grad-CAM overlay is wanted
    explain_label_requested = Signal(str, str)  # absolute image path, the label (multi-label) to explain
    image_wanted = Signal(str)  # absolute image path: show it (a point of the embeddings map)
    try_image_requested = Signal(str)
    try_model_chosen = Signal(str)
    move_requested = Signal(list, str)  # absolute paths of gallery images, the class to move them to
    exclude_requested = Signal(list)  # absolute paths of gallery images

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("insightView")
        self.setAcceptDrops(True)
        self._evaluation = None
        self._note = ""  # the line under the figures: what the run did with its BatchNorm statistics
        self._root = Path()
        self.summary = QLabel(EMPTY_TEXT)
        self.summary.setObjectName("insightSummaryLabel")
        self.summary.setWordWrap(True)
        self.matrix_model = ConfusionMatrixModel(self)
        self.matrix_view = _table("confusionMatrixView", self.matrix_model,
                                  "Rows: true class; columns: predicted class. Click a cell to see its images.")
        self.matrix_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        # Opening on the worst cell must not scroll the top rows away; clicks still select.
        self.matrix_view.setAutoScroll(False)
        for header in (self.matrix_view.horizontalHeader(), self.matrix_view.verticalHeader()):
            header.setDefaultSectionSize(CELL_SIDE)
            header.setMinimumSectionSize(MIN_STRETCHED_CELL)
            header.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # the header's tooltip names the class whole
        # Long class names must not leave the cells no room: the row titles are elided beyond this.
        self.matrix_view.verticalHeader().setMaximumWidth(self.fontMetrics().horizontalAdvance("x" * ROW_TITLE_CHARACTERS))
        self.predicted_title = QLabel("Predicted class")
        self.predicted_title.setObjectName("matrixPredictedTitle")
        self.predicted_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.true_title = VerticalLabel("True class")
        self.true_title.setObjectName("matrixTrueTitle")
        for title in (self.predicted_title, self.true_title):
            title.setToolTip("Rows: the true class; columns: the class predicted.")
        self.matrix_view.clicked.connect(lambda index: self.show_cell(index.row(), index.column()))
        self.per_class_model = PerClassModel(self)
        self.per_class_view = _table("perClassTable", self.per_class_model,
                                     "Precision: of the images predicted as the class, the share that are. "
                                     "Recall: of the class's images, the share found. Support: its images.")
        self.per_class_view.verticalHeader().setVisible(False)
        self.per_class_view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)  # more rows in view
        self.per_class_view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.pairs = QLabel("")
        self.pairs.setObjectName("mostConfusedLabel")
        self.pairs.setWordWrap(True)
        self.gallery_model = GalleryModel(self)
        self.gallery_model.thumbnails_wanted.connect(self.thumbnails_wanted)
        self.gallery = GalleryView(self.gallery_model)
        self.gallery.explain_requested.connect(self._explain)
        self.cell_label = QLabel("Click a cell of the matrix to see its images, highest loss first.")
        self.cell_label.setObjectName("galleryCellLabel")
        self.cell_label.setWordWrap(True)
        self.cam_button = QPushButton("Grad-CAM")
        self.cam_button.setObjectName("gradCamButton")
        self.cam_button.setToolTip("Where the model looked for the selected image's prediction (computed in the "
                                   "background from the run's best checkpoint).")
        self.cam_button.clicked.connect(self.gallery.explain_current)
        self.mend = MendActions(self.gallery, self.gallery.selected_paths, "gallery")
        self.mend.move_requested.connect(self.move_requested)
        self.mend.exclude_requested.connect(self.exclude_requested)
        self.preview = QLabel()
        self.preview.setObjectName("camOverlayLabel")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumWidth(OVERLAY_SIDE // 2)
        self.preview_caption = QLabel("")
        self.preview_caption.setWordWrap(True)
        self.embeddings = EmbeddingPlot()
        self.embeddings.point_chosen.connect(self._show_point)
        self.point_image = QLabel()
        self.point_image.setObjectName("embeddingImageLabel")
        self.point_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.point_image.setMinimumWidth(OVERLAY_SIDE // 2)
        self.point_caption = QLabel("Click a point to see its image here; hover one to name it.")
        self.point_caption.setObjectName("embeddingCaptionLabel")
        self.point_caption.setWordWrap(True)
        # The image preview (a map point) and Grad-CAM share one answer signal: it goes beside
        # whichever asked last.
        self._preview_beside_map = False
        self._point_description = ""
        self.try_panel = TryImagePanel()
        self.try_panel.image_chosen.connect(self.try_image_requested)
        self.try_panel.model_chosen.connect(self.try_model_chosen)
        # A multi-label or regression run: its own page in the matrix's place, its images in a tab.
        self._task = ""
        self.task_page = TaskInsightPage()
        self.task_page.thumbnails_wanted.connect(self.thumbnails_wanted)
        self.task_page.explain_requested.connect(self.explain_label_requested)
        self.task_page.image_wanted.connect(self.image_wanted)
        self.reliability = ReliabilityView()
        self._build_layout()

    def _build_layout(self) -> None:
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.summary)
        side_layout.addWidget(self.per_class_view, 1)
        side_layout.addWidget(self.pairs)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self._titled_matrix())
        top.addWidget(side)
        images = QWidget()
        images_layout = QHBoxLayout(images)
        images_layout.setContentsMargins(0, 0, 0, 0)
        left = QVBoxLayout()
        left.addWidget(self.cell_label)
        left.addWidget(self.gallery, 1)
        images_layout.addLayout(left, 2)
        right = QVBoxLayout()
        right.addWidget(self.cam_button)
        mending = QHBoxLayout()
        mending.addWidget(self.mend.move_button)
        mending.addWidget(self.mend.exclude_button)
        right.addLayout(mending)
        right.addWidget(self.preview, 1)
        right.addWidget(self.preview_caption)
        images_layout.addLayout(right, 1)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("insightTabs")
        self.tabs.addTab(images, "Images")
        embeddings = self._embeddings_with_image()
        self.tabs.addTab(embeddings, "Embeddings")
        self._single_label_tabs = (images, embeddings, self.reliability)  # hidden while a task run's page is shown
        self.tabs.addTab(self.task_page.images, "")  # named by the task when shown
        self.tabs.addTab(self.try_panel, "Try an image")
        self.tabs.addTab(self.reliability, "Calibration")
        self._pages = QStackedWidget()
        self._pages.addWidget(top)
        self._pages.addWidget(self.task_page)
        self._show_task_page("")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self._pages)
        split.addWidget(self.tabs)
        split.setChildrenCollapsible(False)
        self._split = split  # the matrix and the per-class figures get 3/5, until the person drags it
        self._split_moved = False
        split.splitterMoved.connect(self._remember_split_moved)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split)

    def _embeddings_with_image(self) -> QWidget:
        holder = QWidget()
        row = QHBoxLayout(holder)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.embeddings, 2)
        beside = QVBoxLayout()
        beside.addWidget(self.point_image, 1)
        beside.addWidget(self.point_caption)
        row.addLayout(beside, 1)
        return holder

    def _remember_split_moved(self) -> None:
        self._split_moved = True

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if not self._split_moved:  # stretch factors only share what the size hints leave: set the share
            total = sum(self._split.sizes()) or self.height()
            self._split.setSizes([total * 3 // 5, total - total * 3 // 5])

    def _titled_matrix(self) -> QWidget:
        """The matrix with its axis titles: predicted above the columns, true beside the rows."""
        holder = QWidget()
        grid = QGridLayout(holder)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        grid.addWidget(self.predicted_title, 0, 1)
        grid.addWidget(self.true_title, 1, 0)
        grid.addWidget(self.matrix_view, 1, 1)
        return holder

    # --- what the window tells it ------------------------------------------------------------------

    def _show_task_page(self, task: str) -> None:
        """The page and the image tab of a multi-label or regression run, or ("") the matrix's."""
        self._task = task
        self._pages.setCurrentIndex(1 if task else 0)
        images = self.tabs.indexOf(self.task_page.images)
        was_shown = self.tabs.currentIndex() == images  # hiding it moves the current tab on
        for tab in self._single_label_tabs:
            self.tabs.setTabVisible(self.tabs.indexOf(tab), not task)
        self.tabs.setTabVisible(images, bool(task))
        if task:
            self.tabs.setTabText(images, "Label images" if task == "multi-label" else "Residuals")
            self.tabs.setCurrentIndex(images)
        elif was_shown:
            self.tabs.setCurrentWidget(self._single_label_tabs[0])

    def show_task_evaluation(self, evaluation, dataset_root: str | Path, title: str = "") -> None:
        """An engine.insight.task_evaluation.TaskEvaluation of a multi-label or regression run."""
        self._evaluation = None  # the matrix's: nothing of it is shown
        self._show_task_page(evaluation.task)
        self.task_page.show_evaluation(evaluation, dataset_root, title)

    def show_title(self, title: str) -> None:
        """The run shown is called `title` (it was renamed): the summary line names it."""
        if self._task:
            self.task_page.show_title(title)
            return
        evaluation = self._evaluation
        if evaluation is None:
            return
        self.summary.setText(f"{title + ': ' if title else ''}accuracy {evaluation.accuracy:.1%}, balanced "
                             f"{evaluation.balanced_accuracy:.1%} on {self.matrix_model.total()} validation images"
                             + (f"\n{self._note}" if self._note else ""))

    def show_evaluation(self, evaluation, dataset_root: str | Path, title: str = "", note: str = "") -> None:
        """An engine.insight.evaluation.Evaluation of a run's validation set (paths relative to the root);
        `note`: a line under the figures (what the run did with its BatchNorm statistics)."""
        self._note = note
        self._show_task_page("")
        self._evaluation, self._root = evaluation, Path(dataset_root)
        names = list(evaluation.class_names)
        self.matrix_model.set_matrix(names, evaluation.confusion_matrix)
        # A few classes fill the room; many keep square cells and scroll.
        mode = QHeaderView.ResizeMode.Stretch if len(names) <= STRETCH_CLASSES else QHeaderView.ResizeMode.Fixed
        for header in (self.matrix_view.horizontalHeader(), self.matrix_view.verticalHeader()):
            header.setSectionResizeMode(mode)
        self.per_class_model.set_per_class(names, evaluation.per_class)
        self.pairs.setText(confused_pairs_text(list(evaluation.most_confused)))
        self.show_title(title)
        self.gallery_model.set_records([], self._root)
        self.cell_label.setText("Click a cell of the matrix to see its images, highest loss first.")
        self._show_first_confusion()

    def show_embeddings(self, points: list) -> None:
        names = self.matrix_model.class_names()
        if points:
            self.embeddings.show_points(points, names)
        else:
            self.embeddings.clear_points()

    def show_calibration(self, calibration, why_none: str = "") -> None:
        """An engine.insight.reliability.RunCalibration, or None and why there is none."""
        self.reliability.show_calibration(calibration, why_none)

    def show_missing(self, message: str) -> None:
        """No insight for this run (none recorded, or it could not be read)."""
        self._show_task_page("")
        self._evaluation = None
        self.reliability.show_calibration(None)
        self.matrix_model.set_matrix([], [])
        self.per_class_model.set_per_class([], {})
        self.gallery_model.set_records([], self._root)
        self.embeddings.clear_points()
        self.point_image.clear()
        self.pairs.setText("")
        self.summary.setText(message or EMPTY_TEXT)

    def choose_try_image(self) -> None:
        self.try_panel.choose_image()

    def show_try_model(self, text: str) -> None:
        self.try_panel.show_model(text)

    def show_try_busy(self, image: str) -> None:
        self.try_panel.show_busy(image)

    def show_prediction(self, image: str, answer: dict, overlay: QImage | None, note: str = "") -> None:
        self.try_panel.show_prediction(image, answer, overlay, note)

    def show_task_prediction(self, image: str, answer: dict) -> None:
        self.try_panel.show_task_prediction(image, answer)

    def show_try_error(self, message: str) -> None:
        self.try_panel.show_error(message)

    def add_thumbnails(self, images: dict[str, QImage | None]) -> None:
        self.gallery_model.add_thumbnails(images)
        self.task_page.add_thumbnails(images)

    def set_class_names(self, names: list[str]) -> None:
        """The open dataset's classes: where "Move to class" can move gallery images."""
        self.mend.set_class_names(names)

    def apply_moves(self, root: str, moves: list[tuple[str, str]]) -> None:
        """Files of `root` moved ((from, to) relative to it): the gallery's rows follow them."""
        if not same_folder(root, self._root) or self._evaluation is None:
            return
        self.gallery_model.apply_moves(moves, class_of)
        # The cells count what the run saw; their images are found where they are now.
        records = list(self._evaluation.records)
        for row, new in follow_moves((r.path for r in records), moves):
            records[row] = replace(records[row], path=new)
        self._evaluation = replace(self._evaluation, records=records)

    def show_preview(self, image: QImage | None, caption: str) -> None:
        if self._task:
            self.task_page.show_preview(image, caption)
        elif self._preview_beside_map:
            show_image(self.point_image, image)
            if image is None:  # the caption says why there is no image
                self.point_caption.setText(caption)
            else:  # the point's class and prediction say more than the file name
                self.point_caption.setText(self._point_description)
        else:
            show_image(self.preview, image)
            self.preview_caption.setText(caption)

    # --- the person's choices --------------------------------------------------------------------------

    def show_cell(self, row: int, column: int) -> None:
        """Fill the gallery with the images of true class `row` predicted as `column`."""
        if self._evaluation is None:
            return
        names = self.matrix_model.class_names()
        true, pred = names[row], names[column]
        records = [r for r in self._evaluation.records if r.true == true and r.pred == pred]
        self.gallery_model.set_records(records, self._root)
        what = "correctly classified" if row == column else f"predicted as {pred}"
        self.cell_label.setText(f"{len(records)} image(s) of {true} {what}, highest loss first")
        self.matrix_view.setCurrentIndex(self.matrix_model.index(row, column))
        self.tabs.setCurrentIndex(0)

    def _show_first_confusion(self) -> None:
        """Open on the worst cell: the largest off-diagonal count, else the first class."""
        matrix = self.matrix_model
        cells = [(matrix.index(r, c).data(), r, c) for r in range(matrix.rowCount()) for c in range(matrix.columnCount())
                 if r != c]
        count, row, column = max(cells, default=(0, 0, 0))
        if count == 0:
            row = column = 0
        if matrix.rowCount():
            self.show_cell(row, column)

    def _show_point(self, rel: str) -> None:
        """A point of the map was clicked: its image is shown beside the map (the plot rings it)."""
        self._preview_beside_map = True
        self._point_description = self.embeddings.describe(rel)
        self.point_caption.setText(f"{self._point_description}\n(loading…)")
        self.image_wanted.emit(str(self._root / rel))

    def _explain(self, path: str) -> None:
        self._preview_beside_map = False
        self.preview_caption.setText(f"Grad-CAM of {Path(path).name}…")
        self.explain_requested.emit(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        if image_files([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        files = image_files([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])
        if files:
            self.tabs.setCurrentWidget(self.try_panel)
            self.try_image_requested.emit(files[0])
