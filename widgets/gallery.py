"""The gallery: the validation images of one confusion-matrix cell, highest loss first.

The model holds the records and whatever thumbnails have arrived; it asks for the missing ones
through `thumbnails_wanted` (decoded off the GUI thread by whoever listens) and keeps the most
recent ones in a small cache, so clicking back and forth between cells decodes nothing twice.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QAction, QColor, QImage
from PySide6.QtWidgets import QAbstractItemView, QListView

THUMB_SIZE = 72
CACHE_SIZE = 600  # thumbnails kept (about 15 KB each)


class ThumbnailCache:
    """The most recently used thumbnails by absolute path; None marks a file that did not decode."""

    def __init__(self, capacity: int = CACHE_SIZE):
        self.capacity = capacity
        self._images: OrderedDict[str, QImage | None] = OrderedDict()

    def __contains__(self, path: str) -> bool:
        return path in self._images

    def get(self, path: str) -> QImage | None:
        if path in self._images:
            self._images.move_to_end(path)
            return self._images[path]
        return None

    def put(self, path: str, image: QImage | None) -> None:
        self._images[path] = image
        self._images.move_to_end(path)
        while len(self._images) > self.capacity:
            self._images.popitem(last=False)


class GalleryModel(QAbstractListModel):
    """One row per image (records with path, true, pred, loss, confidence; paths relative to `root`)."""

    thumbnails_wanted = Signal(list)  # absolute paths not in the cache
    PathRole = Qt.ItemDataRole.UserRole

    def __init__(self, parent=None):
        super().__init__(parent)
        self._records: list = []
        self._root = Path()
        self.cache = ThumbnailCache()
        # Shown until the thumbnail arrives (or for a file that does not decode): every item keeps
        # the thumbnail's size, so the grid is laid out once and never jumps.
        self._placeholder = QImage(THUMB_SIZE, THUMB_SIZE, QImage.Format.Format_ARGB32_Premultiplied)
        self._placeholder.fill(QColor(220, 222, 226))

    def set_records(self, records: list, root: str | Path) -> None:
        self.beginResetModel()
        self._records = sorted(records, key=lambda r: r.loss, reverse=True)
        self._root = Path(root)
        self.endResetModel()
        missing = [p for p in map(self.absolute_path, range(len(self._records))) if p not in self.cache]
        if missing:
            self.thumbnails_wanted.emit(missing)

    def add_thumbnails(self, images: dict[str, QImage | None]) -> None:
        for path, image in images.items():
            self.cache.put(path, image)
        if self._records:
            self.dataChanged.emit(self.index(0), self.index(len(self._records) - 1),
                                  [Qt.ItemDataRole.DecorationRole])

    def has_thumbnail(self, row: int) -> bool:
        return self.cache.get(self.absolute_path(row)) is not None

    def records(self) -> list:
        return list(self._records)

    @property
    def root(self) -> Path:
        return self._root

    def apply_moves(self, moves: list[tuple[str, str]], class_of) -> None:
        """Rows follow their files after a move ((from, to) relative to the root): the new path, and
        as true class `class_of(new path)`, so the row shows the label it has now."""
        destination = dict(moves)
        for row, record in enumerate(self._records):
            if record.path in destination:
                new = destination[record.path]
                self._records[row] = replace(record, path=new, true=class_of(new))
                self.dataChanged.emit(self.index(row), self.index(row))
        missing = [p for p in map(self.absolute_path, range(len(self._records))) if p not in self.cache]
        if missing:
            self.thumbnails_wanted.emit(missing)

    def record(self, row: int):
        return self._records[row]

    def absolute_path(self, row: int) -> str:
        return str(self._root / self._records[row].path)

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._records)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        record = self._records[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{record.true} → {record.pred}\n{record.confidence:.0%}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self.cache.get(self.absolute_path(index.row())) or self._placeholder
        if role == Qt.ItemDataRole.ToolTipRole:
            ranked = ", ".join(f"{name} {p:.0%}" for name, p in record.top)
            return (f"{record.path}\ntrue: {record.true}, predicted: {record.pred} ({record.confidence:.1%})\n"
                    f"loss: {record.loss:.3f}" + (f"\ntop: {ranked}" if ranked else ""))
        if role == self.PathRole:
            return self.absolute_path(index.row())
        return None


class GalleryView(QListView):
    """Thumbnails in a grid; the context menu (or the Grad-CAM button beside it) asks for the
    overlay of the image under the pointer."""

    explain_requested = Signal(str)  # absolute image path

    def __init__(self, model: GalleryModel, parent=None):
        super().__init__(parent)
        self.setObjectName("galleryView")
        self.setModel(model)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.setGridSize(QSize(THUMB_SIZE + 40, THUMB_SIZE + 44))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setWordWrap(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)  # move or exclude several at once
        self.setToolTip("The images of the chosen cell, highest loss first. Right-click for Grad-CAM, or to move "
                        "the selected images to another class or exclude them.")
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        explain = QAction("Show Grad-CAM", self)
        explain.triggered.connect(self.explain_current)
        self.addAction(explain)
        self.doubleClicked.connect(lambda index: self.explain_requested.emit(index.data(GalleryModel.PathRole)))

    def current_path(self) -> str:
        index = self.currentIndex()
        return index.data(GalleryModel.PathRole) if index.isValid() else ""

    def selected_paths(self) -> list[str]:
        return [index.data(GalleryModel.PathRole) for index in sorted(self.selectedIndexes(), key=QModelIndex.row)]

    def explain_current(self) -> None:
        path = self.current_path()
        if path:
            self.explain_requested.emit(path)


def thumbnails(paths: list[str], should_stop) -> dict[str, QImage | None]:
    """Decode `paths` into thumbnails (QImages may be made off the GUI thread); stops early when a
    newer request replaced this one."""
    from widgets.data_panel import make_thumbnail

    made: dict[str, QImage | None] = {}
    for path in paths:
        if should_stop():
            break
        made[path] = make_thumbnail(path, THUMB_SIZE)
    return made
