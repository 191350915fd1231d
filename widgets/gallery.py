"""The gallery: the validation images of one confusion-matrix cell (or of a multi-label grid cell,
or a regression's largest residuals), highest loss first.

The model holds the records and whatever thumbnails have arrived; it asks for the missing ones
through `thumbnails_wanted` (decoded off the GUI thread by whoever listens) and keeps the most
recent ones in a small cache, so clicking back and forth between cells decodes nothing twice.
The thumbnails' part (ThumbnailRows) and the rows following their moved files (follow_moves) serve
the Suspects tab's model as well.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from PySide6.QtCore import QAbstractItemModel, QAbstractListModel, QModelIndex, QSize, Qt, Signal, SignalInstance
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


class ThumbnailRows:
    """The thumbnails of a model's rows: the cache, the image shown until one arrives, and asking
    (through the model's `wanted` signal) for those not decoded yet."""

    def __init__(self, model: QAbstractItemModel, wanted: SignalInstance):
        self._model, self._wanted = model, wanted
        self.cache = ThumbnailCache()
        # Shown until the thumbnail arrives (or for a file that does not decode): every row keeps
        # the thumbnail's size, so the view is laid out once and never jumps.
        self._placeholder = QImage(THUMB_SIZE, THUMB_SIZE, QImage.Format.Format_ARGB32_Premultiplied)
        self._placeholder.fill(QColor(220, 222, 226))

    def image(self, path: str) -> QImage:
        return self.cache.get(path) or self._placeholder

    def want_missing(self, paths: Iterable[str]) -> None:
        missing = [path for path in paths if path not in self.cache]
        if missing:
            self._wanted.emit(missing)

    def add(self, images: dict[str, QImage | None]) -> None:
        for path, image in images.items():
            self.cache.put(path, image)
        rows = self._model.rowCount()
        if rows:
            self._model.dataChanged.emit(self._model.index(0, 0), self._model.index(rows - 1, 0),
                                         [Qt.ItemDataRole.DecorationRole])


def follow_moves(paths: Iterable[str], moves: Iterable[tuple[str, str]]) -> list[tuple[int, str]]:
    """(row, new path) for each of `paths` whose file moved; `moves` are (from, to) as the journal
    records them, relative to the same folder as `paths`."""
    destination = dict(moves)
    return [(row, destination[path]) for row, path in enumerate(paths) if path in destination]


def describe_prediction(record) -> tuple[str, str]:
    """A prediction record's caption and tooltip."""
    ranked = ", ".join(f"{name} {p:.0%}" for name, p in record.top)
    # The confidence first: a long pair of names wraps, and the grid cuts the last line.
    return (f"{record.confidence:.0%} · {record.true} → {record.pred}",
            f"{record.path}\ntrue: {record.true}, predicted: {record.pred} ({record.confidence:.1%})\n"
            f"loss: {record.loss:.3f}" + (f"\ntop: {ranked}" if ranked else ""))


class GalleryModel(QAbstractListModel):
    """One row per image (records with a path relative to `root` and a loss, highest first);
    `describe(record)` gives its (caption, tooltip): a prediction record's by default."""

    thumbnails_wanted = Signal(list)  # absolute paths not in the cache
    PathRole = Qt.ItemDataRole.UserRole

    def __init__(self, parent=None, describe: Callable[[object], tuple[str, str]] = describe_prediction):
        super().__init__(parent)
        self._describe = describe
        self._records: list = []
        self._root = Path()
        self.thumbnails = ThumbnailRows(self, self.thumbnails_wanted)

    def set_records(self, records: list, root: str | Path) -> None:
        self.beginResetModel()
        self._records = sorted(records, key=lambda r: r.loss, reverse=True)
        self._root = Path(root)
        self.endResetModel()
        self.thumbnails.want_missing(map(self.absolute_path, range(len(self._records))))

    def add_thumbnails(self, images: dict[str, QImage | None]) -> None:
        self.thumbnails.add(images)

    def has_thumbnail(self, row: int) -> bool:
        return self.thumbnails.cache.get(self.absolute_path(row)) is not None

    def records(self) -> list:
        return list(self._records)

    @property
    def root(self) -> Path:
        return self._root

    def apply_moves(self, moves: list[tuple[str, str]], class_of) -> None:
        """Rows follow their files after a move ((from, to) relative to the root): the new path, and
        as true class `class_of(new path)`, so the row shows the label it has now."""
        for row, new in follow_moves((record.path for record in self._records), moves):
            self._records[row] = replace(self._records[row], path=new, true=class_of(new))
            self.dataChanged.emit(self.index(row), self.index(row))
        self.thumbnails.want_missing(map(self.absolute_path, range(len(self._records))))

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
            return self._describe(record)[0]
        if role == Qt.ItemDataRole.DecorationRole:
            return self.thumbnails.image(self.absolute_path(index.row()))
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._describe(record)[1]
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
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # a caption too long for the grid keeps both names' ends
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


def submit_thumbnails(tasks, kind: str, paths: list[str], on_done: Callable[[dict], None],
                      on_error: Callable[[str], None]) -> None:
    """Decode `paths` off the GUI thread with `tasks` (app.worker.BackgroundTasks); a newer request
    of the same `kind` ends this one early."""
    stop_early = tasks.obsolete(kind)
    tasks.submit(kind, lambda: thumbnails(paths, stop_early), on_done, on_error)


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
