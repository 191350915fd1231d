"""The images of a multi-label or regression run, beside an image preview: a grid cell's images with
a Grad-CAM for any label (multi-label), or the largest residuals with the image clicked (regression).
The gallery is widgets.gallery's; this panel says what a row is and where a request goes."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from widgets.gallery import GalleryModel, GalleryView
from widgets.try_image import OVERLAY_SIDE, show_image


def describe_task_image(image) -> tuple[str, str]:
    """Caption and tooltip of an engine.insight.task_views LabelImage or ValueImage."""
    if hasattr(image, "label"):
        on = "on the image" if image.present else "not on the image"
        verdict = "predicted" if image.predicted else "not predicted"
        return (f"{image.probability:.0%} · {image.label}",
                f"{image.path}\n{image.label}: {on}; probability {image.probability:.1%}, threshold "
                f"{image.threshold:.2f}: {verdict}\nloss (this label): {image.loss:.3f}")
    return (f"{image.residual:+.3g}",  # short: the grid's cells are as wide as the first caption
            f"{image.path}\ntrue {image.actual:.6g}, predicted {image.predicted:.6g}\nresidual {image.residual:+.4g}")


class TaskImagesPanel(QWidget):
    thumbnails_wanted = Signal(list)  # absolute image paths to decode
    explain_requested = Signal(str, str)  # absolute image path, the label whose Grad-CAM is wanted
    image_wanted = Signal(str)  # absolute image path: show it
    image_selected = Signal(str)  # path relative to the data root: the image clicked in the gallery

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("taskImagesPanel")
        self._task = ""
        self._described = ""  # the shown image's description, in place of the file name the preview comes with
        self.gallery_model = GalleryModel(self, describe=describe_task_image)
        self.gallery_model.thumbnails_wanted.connect(self.thumbnails_wanted)
        self.gallery = GalleryView(self.gallery_model)
        self.gallery.setObjectName("taskGalleryView")
        self.gallery.explain_requested.connect(self._explain_or_show)
        self.gallery.clicked.connect(self._clicked)
        self.what = QLabel("")
        self.what.setObjectName("taskGalleryLabel")
        self.what.setWordWrap(True)
        self.label_combo = QComboBox()
        self.label_combo.setObjectName("camLabelCombo")
        self.label_combo.setToolTip("The label whose evidence Grad-CAM shows (its logit is the target).")
        self.cam_button = QPushButton("Grad-CAM")
        self.cam_button.setObjectName("labelGradCamButton")
        self.cam_button.setToolTip("Where the model looked for the chosen label in the selected image (computed in "
                                   "the background from the run's best checkpoint; double-click an image for it too).")
        self.cam_button.clicked.connect(self.gallery.explain_current)
        self.preview = QLabel()
        self.preview.setObjectName("taskPreviewLabel")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumWidth(OVERLAY_SIDE)
        self.caption = QLabel("")
        self.caption.setObjectName("taskPreviewCaption")
        self.caption.setWordWrap(True)
        left = QVBoxLayout()
        left.addWidget(self.what)
        left.addWidget(self.gallery, 1)
        cam = QHBoxLayout()
        cam.addWidget(self.label_combo, 1)
        cam.addWidget(self.cam_button)
        right = QVBoxLayout()
        right.addLayout(cam)
        right.addWidget(self.preview, 1)
        right.addWidget(self.caption)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addLayout(left, 2)
        row.addLayout(right, 1)

    def set_task(self, task: str, labels: list[str]) -> None:
        """Grad-CAM (and its label) for a multi-label run; a regression's images are shown as they are."""
        self._task = task
        self.label_combo.clear()
        self.label_combo.addItems(labels if task == "multi-label" else [])
        for widget in (self.label_combo, self.cam_button):
            widget.setVisible(task == "multi-label")
        multi = task == "multi-label"
        self.gallery.setToolTip("Double-click an image (or right-click) for its Grad-CAM of the chosen label."
                                if multi else "Click an image to see it and find its point.")
        self.gallery.actions()[0].setText("Show Grad-CAM" if multi else "Show the image")  # the context menu's one
        self.preview.clear()
        self.caption.setText("")

    def show_images(self, images: list, root: str | Path, what: str, label: str = "") -> None:
        """Fill the gallery (highest loss first) and say what it holds; `label`: the one Grad-CAM explains."""
        self.gallery_model.set_records(images, root)
        self.what.setText(what)
        if label:
            self.label_combo.setCurrentText(label)

    def shown_paths(self) -> list[str]:
        return [record.path for record in self.gallery_model.records()]

    def add_thumbnails(self, images: dict[str, QImage | None]) -> None:
        self.gallery_model.add_thumbnails(images)

    def show_preview(self, image: QImage | None, caption: str) -> None:
        show_image(self.preview, image)
        self.caption.setText(self._described if image is not None and self._described else caption)

    def want_image(self, path: str, description: str) -> None:
        """Ask for the image at `path` (absolute), to be shown with `description`."""
        self._described = description
        self.caption.setText(f"{description}\n(loading…)")
        self.image_wanted.emit(path)

    def _explain_or_show(self, path: str) -> None:
        if self._task == "multi-label" and self.label_combo.currentText():
            self._described = ""  # Grad-CAM's answer comes with its own caption
            self.caption.setText(f"Grad-CAM of {Path(path).name} for {self.label_combo.currentText()}…")
            self.explain_requested.emit(path, self.label_combo.currentText())
        elif path:
            self.want_image(path, describe_task_image(self.gallery_model.record(self.gallery.currentIndex().row()))[1])

    def _clicked(self, index) -> None:
        if self._task == "regression":
            record = self.gallery_model.record(index.row())
            self.image_selected.emit(record.path)
            self.want_image(index.data(GalleryModel.PathRole), describe_task_image(record)[1])
