"""Try an image: choose (or drop) a picture, see the model's top classes as bars and where it looked;
a multi-label model's every label as a bar with its threshold marked, a regression model's value.
A single-label model's probabilities are calibrated (its temperature) unless the person asks for the
raw ones, and an image under the model's unknown threshold reads "none of the classes".

The panel only asks (`image_chosen`, `model_chosen`) and shows what it is given; the prediction
and the Grad-CAM overlay are computed elsewhere, off the GUI thread.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout,
                               QWidget)

from engine.data.images import IMAGE_EXTENSIONS

BAR_HEIGHT = 18
BAR_COLOUR = QColor(52, 120, 246)
THRESHOLD_COLOUR = QColor(60, 60, 60)  # a multi-label threshold's tick across its bar
OVERLAY_SIDE = 180
MODEL_FILTER = ("Models (*.pt *.pth *.safetensors *.onnx *.torchscript *.ts *.pt2);;All files (*)")


def image_filter() -> str:
    return "Images (" + " ".join(f"*{ext}" for ext in sorted(IMAGE_EXTENSIONS)) + ")"


def image_files(paths: list[str]) -> list[str]:
    """The dropped paths that are image files (by extension; decoding says the rest)."""
    return [p for p in paths if Path(p).suffix.lower() in IMAGE_EXTENSIONS and Path(p).is_file()]


class TopKBars(QWidget):
    """One labelled horizontal bar per class, longest first, its length the probability; with
    thresholds (multi-label) a tick marks each label's, and a label over it is ticked ✓."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("topKBars")
        self._top: list[tuple[str, float]] = []
        self._thresholds: dict[str, float] = {}
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)

    def set_top(self, top: list[tuple[str, float]], thresholds: dict[str, float] | None = None) -> None:
        self._top = list(top)
        self._thresholds = dict(thresholds or {})
        self.updateGeometry()
        self.update()

    def over_threshold(self) -> list[str]:
        """The labels at or over their thresholds, as ticked."""
        return [name for name, p in self._top if name in self._thresholds and p >= self._thresholds[name]]

    def top(self) -> list[tuple[str, float]]:
        return list(self._top)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(220, max(1, len(self._top)) * (BAR_HEIGHT + 4))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(120, self.sizeHint().height())

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        metrics = painter.fontMetrics()
        label_width = min(self.width() // 2, max((metrics.horizontalAdvance(n) for n, _ in self._top), default=0) + 8)
        room = max(1, self.width() - label_width - 48)
        for i, (name, probability) in enumerate(self._top):
            y = i * (BAR_HEIGHT + 4)
            text = metrics.elidedText(name, Qt.TextElideMode.ElideRight, label_width - 6)
            painter.setPen(self.palette().text().color())
            painter.drawText(QRectF(0, y, label_width - 6, BAR_HEIGHT), Qt.AlignmentFlag.AlignRight
                             | Qt.AlignmentFlag.AlignVCenter, text)
            painter.fillRect(QRectF(label_width, y + 2, room * probability, BAR_HEIGHT - 4), BAR_COLOUR)
            threshold = self._thresholds.get(name)
            tick = ""
            if threshold is not None:
                painter.fillRect(QRectF(label_width + room * threshold - 1, y, 2, BAR_HEIGHT), THRESHOLD_COLOUR)
                tick = " ✓" if probability >= threshold else ""
            painter.drawText(QRectF(label_width + room * probability + 4, y, 48, BAR_HEIGHT),
                             Qt.AlignmentFlag.AlignVCenter, f"{probability:.0%}{tick}")
        painter.end()


def answer_line(name: str, answer: dict, raw: bool) -> str:
    """What the panel says of a single-label answer (engine.deploy.calibrated.classify's, with
    "raw_top_k"): the top class and its probability, or "none of the classes" under the threshold."""
    top = answer["raw_top_k" if raw else "top_k"][0]
    kind = "raw" if raw or not answer.get("calibrated") else "calibrated"
    if answer.get("unknown"):
        score = answer["score"]
        return (f"{name}: none of the classes (score {score['value']:.4g} < {score['threshold']:.4g}, "
                f"{score['name']}) — closest: {top['class']}, {top['probability']:.0%} ({kind})")
    return f"{name}: {top['class']}, {top['probability']:.0%} ({kind})"


def show_image(label: QLabel, image: QImage | None, side: int = OVERLAY_SIDE) -> None:
    """An image scaled to fit `side`, or an empty label."""
    if image is None or image.isNull():
        label.clear()
        return
    label.setPixmap(QPixmap.fromImage(image).scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio,
                                                    Qt.TransformationMode.SmoothTransformation))


class TryImagePanel(QWidget):
    image_chosen = Signal(str)
    model_chosen = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.try_button = QPushButton("Try an image…")
        self.try_button.setObjectName("tryImageButton")
        self.try_button.setToolTip("Classify an image with the model (or drop image files here).")
        self.try_button.clicked.connect(self.choose_image)
        self.model_button = QPushButton("Another model…")
        self.model_button.setObjectName("tryModelButton")
        self.model_button.setToolTip("Try an exported file or another checkpoint instead of this run's best checkpoint.")
        self.model_button.clicked.connect(self._choose_model)
        self.model_label = QLabel("Model: the run's best checkpoint (none yet)")
        self.model_label.setObjectName("tryModelLabel")
        self.model_label.setWordWrap(True)
        self.raw_check = QCheckBox("&Raw probabilities")
        self.raw_check.setObjectName("tryRawCheck")
        self.raw_check.setToolTip("Show the softmax of the logits as they are, not scaled by the temperature "
                                  "fitted on the run's validation images (the calibrated ones say how often the "
                                  "model is right).")
        self.raw_check.toggled.connect(self._show_answer)
        self.bars = TopKBars()
        self.overlay = QLabel()
        self.overlay.setObjectName("tryOverlayLabel")
        self.overlay.setMinimumSize(OVERLAY_SIDE // 2, OVERLAY_SIDE // 2)
        self.overlay.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message = QLabel("Choose or drop an image to see what the model says about it and where it looked.")
        self.message.setObjectName("tryMessageLabel")
        self.message.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.try_button)
        buttons.addWidget(self.model_button)
        buttons.addStretch(1)
        buttons.addWidget(self.raw_check)
        result = QHBoxLayout()
        result.addWidget(self.overlay)
        result.addWidget(self.bars, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.model_label)
        layout.addLayout(result)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self._answer: tuple[str, dict, str] | None = None  # the last single-label answer: image, answer, note

    def show_model(self, text: str) -> None:
        self.model_label.setText(f"Model: {text}")

    def show_busy(self, image: str) -> None:
        self.message.setText(f"Classifying {Path(image).name}…")

    def show_prediction(self, image: str, answer: dict, overlay: QImage | None, note: str = "") -> None:
        """A single-label answer (see answer_line) and, for a checkpoint, where it looked."""
        self._answer = (image, answer, note)
        show_image(self.overlay, overlay)
        self._show_answer()

    def _show_answer(self) -> None:
        if self._answer is None:
            return
        image, answer, note = self._answer
        calibrated = bool(answer.get("calibrated"))
        self.raw_check.setEnabled(calibrated)  # a model without a temperature has only raw probabilities
        raw = self.raw_check.isChecked() or not calibrated
        self.bars.set_top([(t["class"], t["probability"]) for t in answer["raw_top_k" if raw else "top_k"]])
        self.message.setText(answer_line(Path(image).name, answer, raw) + (f" — {note}" if note else ""))

    def show_task_prediction(self, image: str, answer: dict) -> None:
        """A multi-label model's labels (every label's probability, those over their thresholds
        named), or a regression model's value; no Grad-CAM (it explains one class's score)."""
        show_image(self.overlay, None)
        self._answer = None
        name = Path(image).name
        if answer.get("task") == "regression":
            self.bars.set_top([])
            self.message.setText(f"{name}: predicted value {answer['value']:.4g}")
            return
        probabilities = sorted(answer["probabilities"].items(), key=lambda kv: kv[1], reverse=True)
        self.bars.set_top(probabilities, answer.get("thresholds"))
        labels = ", ".join(answer["labels"]) or "no label over its threshold"
        self.message.setText(f"{name}: {labels} — ✓ marks a label at or over its threshold (the tick on its bar); "
                             f"no Grad-CAM for a multi-label model")

    def show_error(self, message: str) -> None:
        self._answer = None
        self.message.setText(message)
        self.bars.set_top([])  # no bars of an earlier image beside a refusal
        show_image(self.overlay, None)

    def choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Try an image", "", image_filter())
        if path:
            self.image_chosen.emit(path)

    def _choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model to try", "", MODEL_FILTER)
        if path:
            self.model_chosen.emit(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        if image_files([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        for path in image_files([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])[:1]:
            self.image_chosen.emit(path)
