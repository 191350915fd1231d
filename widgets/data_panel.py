"""The data panel: dataset folder or labels CSV, its task, classes (or labels) with counts and
thumbnails, split, size, augmentation; for a CSV the task's figures and its bad rows.

It shows what it is given (a DataConfig, a scan summary, thumbnails, the advice) and reports what
the person edits through `data_edited` and `class_weights_edited`; it never scans or decides
anything itself. Under the class table sits the advice card: Apply is passed on as
`advice_apply_requested`, never applied here.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSignalBlocker, QSize, Qt, Signal
from PySide6.QtGui import QFontDatabase, QImage, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMenu, QMessageBox, QPushButton, QSpinBox,
                               QTableView, QVBoxLayout)

from engine.insight.advisor import Advice
from engine.config import AUGMENTATIONS, CLASS_WEIGHTS, TASKS, DataConfig
from engine.data.images import BadImage, load_rgb
from widgets.advice_card import AdviceCard
from widgets.data_summary import bad_rows_text, headline, is_table, task_text
from widgets.row_table import RowTableModel

THUMB = 24
STRIP_WIDTH = THUMB * 3 + 8
VISIBLE_CLASS_ROWS = 5  # the class table is never so small that it shows fewer rows (or classes)
AUGMENT_TIPS = {
    "none": "No augmentation: every epoch sees the same images (lets a frozen trunk's features be cached).",
    "light": "Random horizontal flips.",
    "standard": "Random resized crops and horizontal flips (torchvision's reference recipe).",
}
CLASS_WEIGHTS_TIP = ("Class-weighted loss, so a rare class counts as much as a common one. auto: on when the "
                     "largest class has 3x or more the images of the smallest; balanced: always; none: never.")
TASK_TIPS = {
    "auto": "From the data: class folders are single-label; a labels CSV's 'labels' column multi-label, "
            "its 'value' column regression.",
    "single-label": "One class per image (class folders, or a CSV with exactly one label a row).",
    "multi-label": "Any number of labels per image (a CSV's 'labels' column): a sigmoid per label, scored by mAP.",
    "regression": "A number per image (a CSV's 'value' column): scored by MAE, RMSE and R².",
}
CSV_FILTER = "Labels CSV (*.csv)"
WARNING_STYLE = "color: #b26a00;"
ERROR_STYLE = "color: #c62828;"


def is_dataset_path(path: str) -> bool:
    """What a drop on the window may open: a folder of class folders, or a labels CSV file."""
    return Path(path).is_dir() or (path.lower().endswith(".csv") and Path(path).is_file())


def make_thumbnail(path: str, size: int = THUMB) -> QImage | None:
    """A small QImage (safe to build off the GUI thread), or None for a file that does not decode."""
    try:
        img = load_rgb(Path(path), min_side=size)
    except BadImage:
        return None
    img.thumbnail((size, size))
    data = img.tobytes()
    qimage = QImage(data, img.width, img.height, 3 * img.width, QImage.Format.Format_RGB888)
    return qimage.copy()  # own the pixels: `data` goes away


def thumbnail_strip(paths: list[str]) -> QImage | None:
    """Up to three thumbnails side by side in one QImage. Painting on a QImage is allowed off the
    GUI thread, so the strips are made in the background and the table only shows them."""
    images = [image for image in map(make_thumbnail, paths) if image is not None][:3]
    if not images:
        return None
    strip = QImage(STRIP_WIDTH, THUMB, QImage.Format.Format_ARGB32_Premultiplied)
    strip.fill(Qt.GlobalColor.transparent)
    painter = QPainter(strip)
    for i, image in enumerate(images):
        painter.drawImage(i * (THUMB + 4), (THUMB - image.height()) // 2, image)
    painter.end()
    return strip


class ClassTableModel(RowTableModel):
    """Class name, train and val counts and a thumbnail strip per class. Rows are read when shown,
    so a dataset of a thousand classes costs nothing until it is scrolled."""

    HEADERS = ("Class", "Train", "Val", "Examples")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._strips: dict[str, QImage | None] = {}
        self._first = "Class"  # "Label" for multi-label data: an image counts under each of its labels

    def set_classes(self, classes: list[dict], first: str = "Class") -> None:
        if first != self._first:
            self._first = first
            self.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, 0)
        self.set_items(classes)  # {"class", "train", "val"} each

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt's name
        if section == 0 and orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self._first
        return super().headerData(section, orientation, role)

    def set_strips(self, strips: dict[str, QImage | None]) -> None:
        self._strips = dict(strips)
        if self._items:
            self.dataChanged.emit(self.index(0, 3), self.index(len(self._items) - 1, 3),
                                  [Qt.ItemDataRole.DecorationRole])

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        counts, column = self._items[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return counts["class"]
            if column in (1, 2):
                return f"{counts['train' if column == 1 else 'val']:,}"
        elif role == Qt.ItemDataRole.DecorationRole and column == 3:
            return self._strips.get(counts["class"])
        elif role == Qt.ItemDataRole.ToolTipRole:
            return f"{counts['class']}: {counts['train']:,} training and {counts['val']:,} validation images"
        elif role == Qt.ItemDataRole.TextAlignmentRole and column in (1, 2):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ClassTable(QTableView):
    """Prefers its minimum height (a few rows): in a small window the space goes to the tree."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(super().sizeHint().width(), self.minimumHeight())


class DataPanel(QGroupBox):
    folder_chosen = Signal(str)
    demo_requested = Signal()
    data_edited = Signal(dict)  # the DataConfig fields the person changed, e.g. {"val_fraction": 0.25}
    class_weights_edited = Signal(str)  # auto, none or balanced (a training setting shown with the data)
    advice_apply_requested = Signal(object)  # Advice

    def __init__(self, parent=None):
        super().__init__("Data", parent)
        defaults = DataConfig()
        self.folder_edit = QLineEdit()
        self.folder_edit.setObjectName("dataFolderEdit")
        self.folder_edit.setPlaceholderText("A folder with one sub-folder per class, or a labels CSV")
        self.folder_edit.setToolTip("The dataset: one sub-folder of images per class (or train/ and val/), or a "
                                    "labels CSV (path + labels or value, optional split). Press Enter, or drop a "
                                    "folder or a .csv file on the window.")
        self.folder_edit.returnPressed.connect(lambda: self.folder_chosen.emit(self.folder_edit.text().strip()))
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setObjectName("browseButton")
        self.browse_button.setToolTip("Choose the dataset: a folder of class folders, or a labels CSV.")
        browse_menu = QMenu(self.browse_button)
        self.browse_folder_action = browse_menu.addAction("Folder…", self.browse)
        self.browse_csv_action = browse_menu.addAction("Labels CSV…", self.browse_csv)
        self.browse_button.setMenu(browse_menu)
        self.demo_button = QPushButton("Demo")
        self.demo_button.setObjectName("demoDatasetButton")
        self.demo_button.setToolTip("Use the built-in synthetic dataset of coloured shapes (made on first use, no download).")
        self.demo_button.clicked.connect(self.demo_requested)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.demo_button)

        self.class_model = ClassTableModel(self)
        self.class_table = ClassTable()
        self.class_table.setObjectName("classTable")
        self.class_table.setModel(self.class_model)
        self.class_table.verticalHeader().setVisible(False)
        self.class_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.class_table.verticalHeader().setDefaultSectionSize(THUMB + 4)
        self.class_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.class_table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # long names keep both ends
        self.class_table.setWordWrap(False)
        header = self.class_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            header.resizeSection(column, 64)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(3, STRIP_WIDTH + 12)
        self._fit_table_height(VISIBLE_CLASS_ROWS)
        self.class_table.setToolTip("Images per class (multi-label: per label) in the training and validation splits.")
        self.task_label = QLabel("")  # a CSV's figures: the value's range and histogram, images without a label
        self.task_label.setObjectName("taskSummaryLabel")
        self.task_label.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))  # the histogram's bars line up
        self.task_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.task_label.hide()

        self.val_spin = QDoubleSpinBox()
        self.val_spin.setObjectName("valFractionSpin")
        self.val_spin.setRange(0.0, 0.9)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(defaults.val_fraction)
        self.val_spin.setToolTip("Share of each class held out for validation (stratified, seeded).")
        self.val_spin.valueChanged.connect(lambda v: self.data_edited.emit({"val_fraction": v}))
        self.size_spin = QSpinBox()
        self.size_spin.setObjectName("imageSizeSpin")
        self.size_spin.setRange(16, 1024)
        self.size_spin.setSingleStep(16)
        self.size_spin.setValue(defaults.image_size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setKeyboardTracking(False)  # typing "224" is one change, not "2", "22", "224"
        self._size_tip = "Side of the square crop the model sees; smaller trains faster."
        self.size_spin.setToolTip(self._size_tip)
        self.size_spin.valueChanged.connect(lambda v: self.data_edited.emit({"image_size": v}))
        self.size_problem_label = QLabel("")
        self.size_problem_label.setObjectName("imageSizeProblemLabel")
        self.size_problem_label.setStyleSheet(ERROR_STYLE)
        self.size_problem_label.setWordWrap(True)
        self.size_problem_label.hide()
        self.augment_combo = QComboBox()
        self.augment_combo.setObjectName("augmentCombo")
        for name in AUGMENTATIONS:
            self.augment_combo.addItem(name, name)
            self.augment_combo.setItemData(self.augment_combo.count() - 1, AUGMENT_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.augment_combo.setCurrentIndex(self.augment_combo.findData(defaults.augment))
        self.augment_combo.setToolTip("Training-time augmentation. 'none' lets a frozen backbone's features be cached.")
        self.augment_combo.currentIndexChanged.connect(
            lambda: self.data_edited.emit({"augment": self.augment_combo.currentData()}))

        form = QGridLayout()  # one row, so the class table keeps its height in a small window
        for column, (text, widget) in enumerate((("Validation", self.val_spin), ("Size", self.size_spin),
                                                  ("Augment", self.augment_combo))):
            label = QLabel(text)
            label.setToolTip(widget.toolTip())
            form.addWidget(label, 0, 2 * column, Qt.AlignmentFlag.AlignRight if column else Qt.AlignmentFlag.AlignLeft)
            form.addWidget(widget, 0, 2 * column + 1)
            form.setColumnStretch(2 * column + 1, 1)
        self.class_weights_combo = QComboBox()
        self.class_weights_combo.setObjectName("classWeightsCombo")
        for name in CLASS_WEIGHTS:
            self.class_weights_combo.addItem(name, name)
        self.class_weights_combo.setToolTip(CLASS_WEIGHTS_TIP)
        self.class_weights_combo.currentIndexChanged.connect(
            lambda: self.class_weights_edited.emit(self.class_weights_combo.currentData()))
        weights_label = QLabel("Class weights")
        weights_label.setToolTip(CLASS_WEIGHTS_TIP)
        form.addWidget(weights_label, 1, 0, 1, 2)
        form.addWidget(self.class_weights_combo, 1, 2, 1, 2)
        self.task_combo = QComboBox()
        self.task_combo.setObjectName("taskCombo")
        for name in TASKS:
            self.task_combo.addItem(name, name)
            self.task_combo.setItemData(self.task_combo.count() - 1, TASK_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.task_combo.setToolTip("What the data gives: one class, several labels or a number per image. "
                                   "auto reads it from the data.")
        self.task_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.task_combo.setMinimumContentsLength(4)  # the window must fit 925 px: long names elide (the list shows them)
        self.task_combo.currentIndexChanged.connect(
            lambda: self.data_edited.emit({"task": self.task_combo.currentData()}))
        task_label = QLabel("Task")
        task_label.setToolTip(self.task_combo.toolTip())
        form.addWidget(task_label, 1, 4, Qt.AlignmentFlag.AlignRight)
        form.addWidget(self.task_combo, 1, 5)
        form.addWidget(self.size_problem_label, 2, 0, 1, 6)

        self.warning_label = QLabel("")
        self.warning_label.setObjectName("dataWarningLabel")
        self.warning_label.setStyleSheet(WARNING_STYLE)
        self.warning_label.setWordWrap(True)
        self.warning_label.setToolTip("Click to list skipped files with their reasons.")
        self.warning_label.mousePressEvent = lambda event: self.show_skipped()

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(form)
        self.advice_card = AdviceCard()
        self.advice_card.apply_requested.connect(self.advice_apply_requested)
        layout.addWidget(self.class_table)
        layout.addWidget(self.task_label)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.advice_card)
        layout.addStretch(1)
        self._skipped: list[dict] = []
        self._editors = (self.folder_edit, self.browse_button, self.demo_button, self.val_spin, self.size_spin,
                         self.augment_combo, self.class_weights_combo, self.task_combo)
        self._given_split = False

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder_edit.text() or str(Path.home()))
        if folder:
            self.folder_chosen.emit(folder)

    def browse_csv(self) -> None:
        """A labels CSV: its rows name the images (relative to the CSV's folder) and their labels or values."""
        start = self.folder_edit.text() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Labels CSV", str(Path(start).parent if start.endswith(".csv")
                                                                      else start), CSV_FILTER)
        if path:
            self.folder_chosen.emit(path)

    # --- what the session says ------------------------------------------------------------------

    def show_data(self, data: DataConfig) -> None:
        """The data settings; the boxes say nothing back (this is not an edit)."""
        with QSignalBlocker(self.folder_edit), QSignalBlocker(self.val_spin), QSignalBlocker(self.size_spin), \
                QSignalBlocker(self.augment_combo), QSignalBlocker(self.task_combo):
            if data.root and self.folder_edit.text() != data.root:
                self.folder_edit.setText(data.root)
            self.val_spin.setValue(data.val_fraction)
            self.size_spin.setValue(data.image_size)
            self.augment_combo.setCurrentIndex(max(0, self.augment_combo.findData(data.augment)))
            self.task_combo.setCurrentIndex(max(0, self.task_combo.findData(data.task)))

    def show_class_weights(self, mode: str) -> None:
        with QSignalBlocker(self.class_weights_combo):
            self.class_weights_combo.setCurrentIndex(max(0, self.class_weights_combo.findData(mode)))

    # --- the advice card: what the session says of it ------------------------------------------------

    def show_advice_pending(self) -> None:
        self.advice_card.show_pending("Working out advice for this dataset and model…")

    def show_advice(self, advice: Advice, applied: bool) -> None:
        self.advice_card.show_advice(advice, applied)

    def show_advice_failure(self, message: str) -> None:
        self.advice_card.show_failure(message)

    def mark_advice_applied(self, applied: bool) -> None:
        self.advice_card.mark_applied(applied)

    def show_advice_note(self, text: str) -> None:
        self.advice_card.show_note(text)

    def show_listing_in_progress(self, folder: str) -> None:
        self.folder_edit.setText(folder)
        self._show_stats("reading the folder…")
        self.warning_label.setText("")
        self.class_model.set_classes([])
        self._show_task_text("")
        self._skipped = []

    def show_error(self, message: str) -> None:
        self._show_stats("")
        self.class_model.set_classes([])
        self._show_task_text("")
        self.class_table.show()
        self.warning_label.setStyleSheet(ERROR_STYLE)
        self.warning_label.setText(message)
        self._skipped = []

    def show_summary(self, summary: dict) -> None:
        """Class (or label) counts, image sizes and warnings of a scan (engine.data.dataset.DatasetScan.summary());
        for a labels CSV also the task's figures and the first bad rows."""
        self._skipped = summary["skipped"]
        task = summary.get("task", "single-label")
        self.class_model.set_classes(summary["classes"], "Label" if task == "multi-label" else "Class")
        self.class_table.setVisible(task != "regression")  # one "value" row says nothing: the range below does
        self._fit_table_height(min(len(summary["classes"]), VISIBLE_CLASS_ROWS))
        self._show_stats(headline(summary))
        self._show_task_text(task_text(summary))
        self._given_split = summary["layout"] in ("train-val", "csv-split")
        self.val_spin.setEnabled(not self._given_split and self.folder_edit.isEnabled())
        self.val_spin.setToolTip(("Validation: the CSV's split column, as given." if is_table(summary) else
                                  "Validation: the dataset's val/ folder, as given.") if self._given_split else
                                 "Share of each class held out for validation (stratified, seeded).")
        self.warning_label.setStyleSheet(WARNING_STYLE)
        bad_rows = bad_rows_text(summary)  # a CSV's skipped rows, with reasons: the scan's count line says less
        warnings = [w for w in summary["warnings"] if not (bad_rows and w.endswith("file(s) skipped"))]
        self.warning_label.setText(" · ".join(filter(None, [bad_rows, *warnings])))

    def _show_task_text(self, text: str) -> None:
        self.task_label.setText(text)
        self.task_label.setVisible(bool(text))

    def _show_stats(self, text: str) -> None:
        """In the panel's title: one line less for the panel, one row more for the tree below."""
        self.setTitle(f"Data · {text}" if text else "Data")

    def _fit_table_height(self, rows: int) -> None:
        """Tall enough for `rows` classes without scrolling, and no taller: the tree below needs the room."""
        header = self.class_table.horizontalHeader().sizeHint().height()
        self.class_table.setMinimumHeight(header + rows * (THUMB + 4) + 4)

    def show_thumbnails(self, strips: dict[str, QImage | None]) -> None:
        self.class_model.set_strips(strips)

    def set_image_size_rule(self, minimum: int, reason: str) -> None:
        """The architecture's smallest image size: the box goes no lower, and says why."""
        with QSignalBlocker(self.size_spin):
            self.size_spin.setMinimum(minimum)
        self.size_spin.setToolTip(f"{self._size_tip}\nAt least {minimum} px: {reason}" if reason else self._size_tip)
        if self.size_spin.value() < minimum:
            self.size_spin.setValue(minimum)  # an edit: the session hears of it

    def show_image_size_problem(self, problem: str) -> None:
        self.size_problem_label.setText(problem)
        self.size_problem_label.setVisible(bool(problem))

    def set_read_only(self, read_only: bool) -> None:
        """While a run trains, the panel shows its settings and takes no edits."""
        for widget in self._editors:
            widget.setEnabled(not read_only)
        self.val_spin.setEnabled(not read_only and not self._given_split)
        self.advice_card.setEnabled(not read_only)

    # --- skipped files ---------------------------------------------------------------------------

    def show_skipped(self) -> None:
        if not self._skipped:
            return
        lines = [f"{Path(s['path']).name}: {s['reason']}  ({s['path']})" for s in self._skipped[:200]]
        more = f"\n… and {len(self._skipped) - 200} more" if len(self._skipped) > 200 else ""
        box = QMessageBox(QMessageBox.Icon.Information, "Skipped files and rows",
                          f"{len(self._skipped)} file(s) or row(s) cannot be used and are skipped.", parent=self)
        box.setDetailedText("\n".join(lines) + more)
        box.open()
