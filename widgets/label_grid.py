"""The multi-label grid: what the confusion matrix becomes when each label is a yes/no question.
One row per label, its 2x2 laid out in a row: on the image and found (TP), on it and missed (FN),
not on it but predicted (FP), neither (TN). Clicking a cell asks for its images."""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QAbstractScrollArea, QHeaderView, QSizePolicy, QTableView

from engine.insight.task_views import CELL_NAMES, CELLS
from widgets.confusion import heat_colour

HEADERS = {"tp": "TP", "fn": "FN", "fp": "FP", "tn": "TN"}
HEADER_TIPS = {"tp": "True positives: the label is on the image and was predicted",
               "fn": "False negatives: the label is on the image but was missed",
               "fp": "False positives: predicted, but the label is not on the image",
               "tn": "True negatives: not on the image, not predicted"}


class LabelGridModel(QAbstractTableModel):
    """Rows: labels; columns: CELLS. The colour is the count's share of the images that do (TP, FN)
    or do not (FP, TN) have the label, so a rare label's misses show as clearly as a common one's."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._labels: list[str] = []
        self._counts: list[dict[str, int]] = []

    def set_grid(self, grid: dict[str, dict[str, int]]) -> None:
        self.beginResetModel()
        self._labels, self._counts = list(grid), [dict(counts) for counts in grid.values()]
        self.endResetModel()

    def labels(self) -> list[str]:
        return list(self._labels)

    def count(self, label: str, cell: str) -> int:
        return self._counts[self._labels.index(label)][cell]

    def cell_at(self, index: QModelIndex) -> tuple[str, str]:
        return self._labels[index.row()], CELLS[index.column()]

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(self._labels)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(CELLS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt's name
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(CELLS):
            if role == Qt.ItemDataRole.DisplayRole:
                return HEADERS[CELLS[section]]
            if role == Qt.ItemDataRole.ToolTipRole:
                return HEADER_TIPS[CELLS[section]]
        if orientation == Qt.Orientation.Vertical and 0 <= section < len(self._labels):
            if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                return self._labels[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        label, cell = self.cell_at(index)
        counts = self._counts[index.row()]
        count = counts[cell]
        having = counts["tp"] + counts["fn"] if cell in ("tp", "fn") else counts["fp"] + counts["tn"]
        share = count / having if having else 0.0
        if role == Qt.ItemDataRole.DisplayRole:
            return count
        if role == Qt.ItemDataRole.BackgroundRole:
            return heat_colour(share, cell in ("tp", "tn"))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return Qt.AlignmentFlag.AlignCenter
        if role == Qt.ItemDataRole.ToolTipRole:
            group = "with" if cell in ("tp", "fn") else "without"
            return (f"{label}: {count} {CELL_NAMES[cell]} ({share:.0%} of the {having} images {group} it); "
                    f"click to see them")
        return None


class LabelGrid(QTableView):
    cell_chosen = Signal(str, str)  # label, cell (one of CELLS)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("labelGridView")
        self.grid_model = LabelGridModel(self)
        self.setModel(self.grid_model)
        self.setToolTip("Each label as a yes/no question: TP found, FN missed, FP predicted but absent, TN rightly "
                        "absent. Click a cell to see its images, highest loss first.")
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setAutoScroll(False)
        # As narrow as its counts: the per-label figures beside it need the room.
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setMinimumSectionSize(self.fontMetrics().horizontalAdvance("0000") + 12)
        self.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Expanding)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.clicked.connect(lambda index: self.cell_chosen.emit(*self.grid_model.cell_at(index)))

    def minimumSizeHint(self):  # noqa: N802 - Qt override
        # Never squeezed below its four columns: it is what the gallery is chosen from.
        return self.sizeHint()

    def set_grid(self, grid: dict[str, dict[str, int]]) -> None:
        self.grid_model.set_grid(grid)
        self.updateGeometry()

    def select_cell(self, label: str, cell: str) -> None:
        self.setCurrentIndex(self.grid_model.index(self.grid_model.labels().index(label), CELLS.index(cell)))
