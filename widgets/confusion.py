"""Table models of an evaluation: the confusion matrix as a heat map, and per-class figures."""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSize, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QLabel

from widgets.row_table import RowTableModel

DIAGONAL_HUE = 0.36  # green: correct predictions
OFF_DIAGONAL_HUE = 0.0  # red: confusions


def heat_colour(share: float, correct: bool) -> QColor:
    """White at 0, a saturated green (diagonal) or red (confusion) at 1 of the row."""
    share = min(1.0, max(0.0, share))
    return QColor.fromHsvF(DIAGONAL_HUE if correct else OFF_DIAGONAL_HUE, 0.75 * share, 1.0 - 0.25 * share)


class VerticalLabel(QLabel):
    """A label written bottom to top: the matrix's "True class" axis title beside its rows."""

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.translate(0, self.height())
        painter.rotate(-90)
        painter.drawText(0, 0, self.height(), self.width(), int(Qt.AlignmentFlag.AlignCenter), self.text())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return super().sizeHint().transposed()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return super().minimumSizeHint().transposed()


class ConfusionMatrixModel(QAbstractTableModel):
    """K rows (true class) × K columns (predicted class); the count is the DisplayRole; the colour
    is the count's share of its row, so a small class's mistakes show as clearly as a big one's."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._names: list[str] = []
        self._matrix: list[list[int]] = []

    def set_matrix(self, class_names: list[str], matrix: list[list[int]]) -> None:
        self.beginResetModel()
        self._names = list(class_names)
        self._matrix = [list(map(int, row)) for row in matrix]
        self.endResetModel()

    def class_names(self) -> list[str]:
        return list(self._names)

    def total(self) -> int:
        return sum(map(sum, self._matrix))

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._matrix)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._names)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(self._names):
            return self._names[section]
        if role == Qt.ItemDataRole.ToolTipRole and 0 <= section < len(self._names):
            kind = "true class" if orientation == Qt.Orientation.Vertical else "predicted class"
            return f"{kind}: {self._names[section]}"
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        r, c = index.row(), index.column()
        count = self._matrix[r][c]
        row_total = sum(self._matrix[r])
        share = count / row_total if row_total else 0.0
        if role == Qt.ItemDataRole.DisplayRole:
            return count
        if role == Qt.ItemDataRole.BackgroundRole:
            return heat_colour(share, r == c)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return Qt.AlignmentFlag.AlignCenter
        if role == Qt.ItemDataRole.ToolTipRole:
            verb = "correctly classified" if r == c else f"predicted as {self._names[c]}"
            return f"{count} of {row_total} images of {self._names[r]} {verb} ({share:.0%}); click to see them"
        return None


class PerClassModel(RowTableModel):
    """Precision, recall, F1 and support of each class."""

    HEADERS = ("Class", "Precision", "Recall", "F1", "Support")
    KEYS = ("precision", "recall", "f1", "support")

    def set_per_class(self, class_names: list[str], per_class: dict[str, dict]) -> None:
        self.set_items((name, per_class.get(name, {})) for name in class_names)

    ValueRole = Qt.ItemDataRole.UserRole  # the figure unrounded

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        name, figures = self._items[index.row()]
        key = self.KEYS[index.column() - 1] if index.column() else ""
        if role == self.ValueRole:
            return figures.get(key) if key else name
        if role == Qt.ItemDataRole.DisplayRole:
            if index.column() == 0:
                return name
            value = figures.get(key)
            if value is None:
                return "—"
            return str(int(value)) if key == "support" else f"{value:.2f}"
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() > 0:
            return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        return None


def confused_pairs_text(most_confused: list[dict], limit: int = 5) -> str:
    """'cat → dog 7 · dog → cat 3' for the most-confused pairs, or a line saying there are none."""
    pairs = [p for p in most_confused if p.get("count", 0) > 0][:limit]
    if not pairs:
        return "Most confused: none — every validation image was classified correctly."
    return "Most confused: " + " · ".join(f"{p['true']} → {p['pred']} {p['count']}" for p in pairs)
