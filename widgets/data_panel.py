"""The data panel: dataset folder, classes with counts and thumbnails, split, size, augmentation."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMessageBox, QPushButton, QSpinBox,
                               QTableWidget, QTableWidgetItem, QVBoxLayout)

from engine.config import AUGMENTATIONS, DataConfig
from engine.images import BadImage, load_rgb

THUMB = 40
AUGMENT_TIPS = {
    "none": "No augmentation: every epoch sees the same images (lets a frozen trunk's features be cached).",
    "light": "Random horizontal flips.",
    "standard": "Random resized crops and horizontal flips (torchvision's reference recipe).",
}


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


class DataPanel(QGroupBox):
    folder_chosen = Signal(str)
    demo_requested = Signal()
    settings_changed = Signal()

    def __init__(self, parent=None):
        super().__init__("Data", parent)
        self.folder_edit = QLineEdit()
        self.folder_edit.setObjectName("dataFolderEdit")
        self.folder_edit.setPlaceholderText("A folder with one sub-folder per class (or train/ and val/)")
        self.folder_edit.setToolTip("The dataset: one sub-folder of images per class. Press Enter or drop a folder on the window.")
        self.folder_edit.returnPressed.connect(lambda: self.folder_chosen.emit(self.folder_edit.text().strip()))
        browse = QPushButton("Browse…")
        browse.setObjectName("browseButton")
        browse.setToolTip("Choose the dataset folder.")
        browse.clicked.connect(self._browse)
        demo = QPushButton("Demo dataset")
        demo.setObjectName("demoDatasetButton")
        demo.setToolTip("Use the built-in synthetic dataset of coloured shapes (made on first use, no download).")
        demo.clicked.connect(self.demo_requested)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        row.addWidget(demo)

        self.class_table = QTableWidget(0, 4)
        self.class_table.setObjectName("classTable")
        self.class_table.setHorizontalHeaderLabels(["Class", "Train", "Val", "Examples"])
        self.class_table.verticalHeader().setVisible(False)
        self.class_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.class_table.setIconSize(QSize(THUMB * 3 + 8, THUMB))
        self.class_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.class_table.setToolTip("Images per class in the training and validation splits.")
        self.class_table.setMinimumHeight(120)

        self.val_spin = QDoubleSpinBox()
        self.val_spin.setObjectName("valFractionSpin")
        self.val_spin.setRange(0.0, 0.9)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(DataConfig().val_fraction)
        self.val_spin.setToolTip("Share of each class held out for validation (stratified, seeded).")
        self.split_note = QLabel("")
        self.size_spin = QSpinBox()
        self.size_spin.setObjectName("imageSizeSpin")
        self.size_spin.setRange(16, 1024)
        self.size_spin.setSingleStep(16)
        self.size_spin.setValue(DataConfig().image_size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Side of the square crop the model sees; smaller trains faster.")
        self.augment_combo = QComboBox()
        self.augment_combo.setObjectName("augmentCombo")
        for name in AUGMENTATIONS:
            self.augment_combo.addItem(name, name)
            self.augment_combo.setItemData(self.augment_combo.count() - 1, AUGMENT_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.augment_combo.setCurrentText(DataConfig().augment)
        self.augment_combo.setToolTip("Training-time augmentation. 'none' lets a frozen backbone's features be cached.")
        for signal in (self.val_spin.valueChanged, self.size_spin.valueChanged, self.augment_combo.currentIndexChanged):
            signal.connect(self.settings_changed)

        split_row = QHBoxLayout()
        split_row.addWidget(self.val_spin)
        split_row.addWidget(self.split_note, 1)
        form = QFormLayout()
        form.addRow("Validation", split_row)
        form.addRow("Image size", self.size_spin)
        form.addRow("Augmentation", self.augment_combo)

        self.warning_label = QLabel("")
        self.warning_label.setObjectName("dataWarningLabel")
        self.warning_label.setStyleSheet("color: #b26a00;")
        self.warning_label.setWordWrap(True)
        self.warning_label.setToolTip("Click to list skipped files with their reasons.")
        self.warning_label.mousePressEvent = lambda event: self.show_skipped()
        self.stats_label = QLabel("")
        self.stats_label.setObjectName("dataStatsLabel")
        self.stats_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.stats_label)
        layout.addWidget(self.class_table, 1)
        layout.addWidget(self.warning_label)
        layout.addLayout(form)
        self._skipped: list[dict] = []
        self._layout = "folders"

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder_edit.text() or str(Path.home()))
        if folder:
            self.folder_chosen.emit(folder)

    def set_folder_text(self, folder: str) -> None:
        self.folder_edit.setText(folder)

    def show_scanning(self, folder: str) -> None:
        self.folder_edit.setText(folder)
        self.stats_label.setText("Scanning…")
        self.warning_label.setText("")

    def show_error(self, message: str) -> None:
        self.stats_label.setText("")
        self.class_table.setRowCount(0)
        self.warning_label.setStyleSheet("color: #c62828;")
        self.warning_label.setText(message)
        self._skipped = []

    def show_scan(self, summary: dict, thumbnails: dict[str, list[QImage]]) -> None:
        classes = summary["classes"]
        self._layout = summary["layout"]
        self._skipped = summary["skipped"]
        self.class_table.setRowCount(len(classes))
        for r, counts in enumerate(classes):
            self.class_table.setItem(r, 0, QTableWidgetItem(counts["class"]))
            for c, key in ((1, "train"), (2, "val")):
                item = QTableWidgetItem(f"{counts[key]:,}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.class_table.setItem(r, c, item)
            strip = self._strip(thumbnails.get(counts["class"], []))
            item = QTableWidgetItem()
            if strip is not None:
                item.setIcon(QIcon(strip))
            self.class_table.setItem(r, 3, item)
            self.class_table.setRowHeight(r, THUMB + 4)
        self.class_table.setColumnWidth(3, THUMB * 3 + 16)
        sizes = summary.get("image_sizes") or {}
        size_text = (f" · images {sizes['width']['median']}×{sizes['height']['median']} px (median)" if sizes else "")
        self.stats_label.setText(f"{len(classes)} classes · {summary['total']:,} images{size_text}")
        given = self._layout == "train-val"
        self.val_spin.setEnabled(not given)
        self.split_note.setText("using train/ and val/ as given" if given else "of each class")
        self.warning_label.setStyleSheet("color: #b26a00;")
        self.warning_label.setText(" · ".join(summary["warnings"]))

    @staticmethod
    def _strip(images: list[QImage]) -> QPixmap | None:
        images = [i for i in images if i is not None][:3]
        if not images:
            return None
        strip = QPixmap(THUMB * 3 + 8, THUMB)
        strip.fill(Qt.GlobalColor.transparent)
        painter = QPainter(strip)
        for i, image in enumerate(images):
            painter.drawImage(i * (THUMB + 4), (THUMB - image.height()) // 2, image)
        painter.end()
        return strip

    def show_skipped(self) -> None:
        if not self._skipped:
            return
        lines = [f"{Path(s['path']).name}: {s['reason']}  ({s['path']})" for s in self._skipped[:200]]
        more = f"\n… and {len(self._skipped) - 200} more" if len(self._skipped) > 200 else ""
        box = QMessageBox(QMessageBox.Icon.Information, "Skipped files",
                          f"{len(self._skipped)} file(s) cannot be used and are skipped.", parent=self)
        box.setDetailedText("\n".join(lines) + more)
        box.open()

    def values(self) -> dict:
        return {"val_fraction": self.val_spin.value(), "image_size": self.size_spin.value(),
                "augment": self.augment_combo.currentData()}

    def set_values(self, data: DataConfig) -> None:
        self.val_spin.setValue(data.val_fraction)
        self.size_spin.setValue(data.image_size)
        self.augment_combo.setCurrentIndex(max(0, self.augment_combo.findData(data.augment)))
