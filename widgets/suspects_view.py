"""The Suspects tab (images most likely labelled wrong, most suspect first) and the mending actions
it shares with the gallery: "Move to class …" and "Exclude" for the selected images.

Views only: they show a report and ask for work through signals (find, stop, move, exclude,
thumbnails); app.data_edit_session does the work off the GUI thread. After a move the rows follow
their files (`apply_moves`), so the person sees the new label in place and Undo brings the old one back.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Callable

from PySide6.QtCore import QModelIndex, QObject, QSize, Qt, Signal
from PySide6.QtGui import QAction, QImage
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QMenu, QPushButton, QSplitter,
                               QTableView, QToolButton, QVBoxLayout, QWidget)

from engine.curation.dataset_edits import EXCLUDED
from widgets.gallery import THUMB_SIZE, ThumbnailRows, follow_moves
from widgets.row_table import RowTableModel

EXCLUDED_LABEL = "excluded"
MAX_SHOWN = 200  # the most suspect rows shown (and thumbnailed); a whole ranked dataset helps no one
IDLE_TEXT = ("Find suspects ranks every image by how unlikely its label is, from the frozen trunk's features "
             "(K-fold) or, without usable features, the shown run's validation predictions.")


def class_of(rel: str) -> str:
    """The class a dataset file now belongs to, from its path: its folder, or "excluded"."""
    path = PurePosixPath(rel)
    return EXCLUDED_LABEL if path.parts and path.parts[0] == EXCLUDED else path.parent.name


def same_folder(a: str | Path, b: str | Path) -> bool:
    return bool(str(a)) and bool(str(b)) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class MendActions(QObject):
    """"Move to class …" (a submenu of the class names) and "Exclude" for the images a view has
    selected: added to the view's context menu, and as two buttons to place beside it."""

    move_requested = Signal(list, str)  # absolute image paths, the class to move them to
    exclude_requested = Signal(list)  # absolute image paths

    def __init__(self, view: QAbstractItemView, selected_paths: Callable[[], list[str]], name: str):
        super().__init__(view)
        self._selected_paths = selected_paths
        self.move_menu = QMenu("Move to class", view)
        self.move_menu.setObjectName(f"{name}MoveMenu")
        move = QAction("Move to class", view)
        move.setMenu(self.move_menu)
        exclude = QAction("Exclude", view)
        exclude.setObjectName(f"{name}ExcludeAction")
        exclude.triggered.connect(self.exclude_selected)
        view.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        view.addAction(move)
        view.addAction(exclude)
        self.move_button = QToolButton()
        self.move_button.setObjectName(f"{name}MoveButton")
        self.move_button.setText("Move to class")
        self.move_button.setMenu(self.move_menu)
        self.move_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.move_button.setToolTip("Move the selected images into another class folder (Ctrl+Z undoes).")
        self.exclude_button = QPushButton("Exclude")
        self.exclude_button.setObjectName(f"{name}ExcludeButton")
        self.exclude_button.setToolTip("Set the selected images aside in the dataset's _excluded folder, which "
                                       "training ignores; nothing is deleted (Ctrl+Z undoes).")
        self.exclude_button.clicked.connect(self.exclude_selected)
        self.set_class_names([])

    def set_class_names(self, names: list[str]) -> None:
        self.move_menu.clear()
        for name in names:
            self.move_menu.addAction(name).triggered.connect(lambda _=False, n=name: self.move_selected(n))
        self.move_menu.setEnabled(bool(names))
        self.move_button.setEnabled(bool(names))

    def move_selected(self, class_name: str) -> None:
        paths = self._selected_paths()
        if paths:
            self.move_requested.emit(paths, class_name)

    def exclude_selected(self) -> None:
        paths = self._selected_paths()
        if paths:
            self.exclude_requested.emit(paths)


GIVEN_LABEL_TIP = ("How likely the image's given label is, by a model that never saw the image: low means "
                   "suspect (the list is sorted lowest first).")


class SuspectsModel(RowTableModel):
    """One row per suspect: thumbnail, path, given class, likely class, probability of the given one."""

    # "Probability 0.0 %" read as "not suspect": the header names whose probability it is.
    HEADERS = ("Image", "Path", "Given", "Likely", "P(given label)")
    thumbnails_wanted = Signal(list)  # absolute paths not in the cache
    PathRole = Qt.ItemDataRole.UserRole

    def __init__(self, parent=None):
        super().__init__(parent)
        self.root = ""
        self.thumbnails = ThumbnailRows(self, self.thumbnails_wanted)

    def set_suspects(self, suspects: list[dict], root: str) -> None:
        """`suspects`: engine.curation.suspects' rows ({"path", "given", "likely", "probability"}), paths relative to `root`."""
        self.root = root
        self.set_items(dict(s) for s in suspects)
        self.thumbnails.want_missing(map(self.absolute_path, range(self.rowCount())))

    def suspect(self, row: int) -> dict:
        return dict(self._items[row])

    def absolute_path(self, row: int) -> str:
        return str(Path(self.root) / self._items[row]["path"])

    def add_thumbnails(self, images: dict[str, QImage | None]) -> None:
        self.thumbnails.add(images)

    def apply_moves(self, root: str, moves: list[tuple[str, str]]) -> None:
        """Rows follow their files: (from, to) paths relative to `root`, as the journal records them."""
        if not same_folder(root, self.root):
            return
        for row, new in follow_moves((item["path"] for item in self._items), moves):
            self._items[row].update(path=new, given=class_of(new))
            self.dataChanged.emit(self.index(row, 0), self.index(row, self.columnCount() - 1))
        self.thumbnails.want_missing(map(self.absolute_path, range(self.rowCount())))

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        item, column = self._items[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole and column:
            if column == 4:
                return f"{item['probability']:.1%}"
            return item[("path", "given", "likely")[column - 1]]
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return self.thumbnails.image(self.absolute_path(index.row()))
        if role == Qt.ItemDataRole.ToolTipRole:
            return (f"{item['path']}\ngiven: {item['given']}, likely: {item['likely']}\n"
                    f"probability of the given class: {item['probability']:.1%}")
        if role == self.PathRole:
            return self.absolute_path(index.row())
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt's name
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole and section == 4:
            return GIVEN_LABEL_TIP
        return super().headerData(section, orientation, role)


def why_paired(first: str, second: str) -> str:
    """Near-duplicates are reported when their labels differ, else because one is in training and
    the other in validation (a leak that flatters validation)."""
    a, b = class_of(first), class_of(second)
    return f"labels differ: {a} / {b}" if a != b else "same class, one in training and one in validation"


class DuplicatesModel(RowTableModel):
    """One row per near-duplicate pair, most similar first."""

    HEADERS = ("First image", "Second image", "Similarity", "Why listed")

    def set_pairs(self, pairs) -> None:
        self.set_items((a, b, similarity, why_paired(a, b)) for a, b, similarity in pairs)

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        first, second, similarity, why = self._items[index.row()]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{first}\n{second}\ncosine similarity of their features {similarity:.4f}; {why}"
        return (first, second, f"{similarity:.3f}", why)[index.column()]


class SuspectsView(QWidget):
    find_requested = Signal()
    stop_requested = Signal()
    thumbnails_wanted = Signal(list)
    move_requested = Signal(list, str)  # absolute image paths, the class to move them to
    exclude_requested = Signal(list)  # absolute image paths

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("suspectsPanel")
        self.model = SuspectsModel(self)
        self.model.thumbnails_wanted.connect(self.thumbnails_wanted)
        self.table = QTableView()
        self.table.setObjectName("suspectsView")
        self.table.setModel(self.model)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_SIZE + 4)
        # Widths come from the texts (_fit_columns): ResizeToContents would ask the model for every
        # cell's size hint, a 51 ms stall of the GUI thread when 200 suspects arrive.
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # the path takes the room left
        header.resizeSection(0, THUMB_SIZE + 8)
        self.mend = MendActions(self.table, self.selected_paths, "suspects")
        self.mend.move_requested.connect(self.move_requested)
        self.mend.exclude_requested.connect(self.exclude_requested)
        self.find_button = QPushButton("Find suspects")
        self.find_button.setObjectName("findSuspectsButton")
        self.find_button.setToolTip("Rank the open dataset's images by how unlikely their label is (in the "
                                    "background; the model and weights chosen on the left).")
        self.find_button.clicked.connect(self.find_requested)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopSuspectsButton")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        self.note = QLabel(IDLE_TEXT)
        self.note.setObjectName("suspectsNoteLabel")
        self.note.setWordWrap(True)
        self.duplicates_model = DuplicatesModel(self)
        self.duplicates = QTableView()
        self.duplicates.setObjectName("duplicatePairsView")
        self.duplicates.setModel(self.duplicates_model)
        self.duplicates.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.duplicates.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.duplicates.verticalHeader().setVisible(False)
        self.duplicates.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.duplicates.setToolTip("Pairs of images whose features are nearly identical while their labels "
                                   "differ, or one is in training and the other in validation.")
        self.duplicates_title = QLabel("")
        self.duplicates_title.setObjectName("duplicatePairsLabel")
        self.duplicates_box = QWidget()
        box = QVBoxLayout(self.duplicates_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.duplicates_title)
        box.addWidget(self.duplicates, 1)
        self.duplicates_box.setVisible(False)
        top = QHBoxLayout()
        top.addWidget(self.find_button)
        top.addWidget(self.stop_button)
        top.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.mend.move_button)
        bottom.addWidget(self.mend.exclude_button)
        bottom.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.note)
        lists = QSplitter(Qt.Orientation.Vertical)
        lists.addWidget(self.table)
        lists.addWidget(self.duplicates_box)
        lists.setStretchFactor(0, 3)
        lists.setStretchFactor(1, 1)
        lists.setChildrenCollapsible(False)
        layout.addWidget(lists, 1)
        layout.addLayout(bottom)

    def selected_paths(self) -> list[str]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.model.absolute_path(row) for row in rows]

    def set_class_names(self, names: list[str]) -> None:
        self.mend.set_class_names(names)

    def show_busy(self, text: str) -> None:
        self.find_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.note.setText(text)

    def show_report(self, report, root: str) -> None:
        """An engine.curation.suspects.SuspectReport of the dataset at `root`: its source note says how it was found."""
        self.find_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        shown = list(report.suspects[:MAX_SHOWN])
        self.model.set_suspects(shown, root)
        self._fit_columns(shown)
        lines = [report.note]
        if len(report.suspects) > len(shown):
            lines.append(f"the {len(shown)} most suspect of {len(report.suspects)} shown")
        if report.duplicates:
            lines.append(f"{len(report.duplicates)} near-duplicate pair(s) across classes or splits, listed below")
        self.note.setText("; ".join(lines))
        self._show_duplicates(list(report.duplicates))

    def _show_duplicates(self, pairs: list) -> None:
        self.duplicates_model.set_pairs(pairs)
        self.duplicates_title.setText(f"{len(pairs)} near-duplicate pair(s): the same picture under two labels, "
                                      f"or in both training and validation")
        self.duplicates_box.setVisible(bool(pairs))

    def _fit_columns(self, rows: list[dict]) -> None:
        """Class and probability columns as wide as their widest text, measured once."""
        metrics, header, padding = self.table.fontMetrics(), self.table.horizontalHeader(), 24
        for column, key in ((2, "given"), (3, "likely")):
            texts = [SuspectsModel.HEADERS[column], *(row[key] for row in rows)]
            header.resizeSection(column, max(map(metrics.horizontalAdvance, texts)) + padding)
        header.resizeSection(4, metrics.horizontalAdvance(SuspectsModel.HEADERS[4]) + padding)

    def show_failure(self, message: str) -> None:
        self.find_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.note.setText(message)

    def add_thumbnails(self, images: dict) -> None:
        self.model.add_thumbnails(images)

    def apply_moves(self, root: str, moves: list[tuple[str, str]]) -> None:
        self.model.apply_moves(root, moves)
