"""The Export dialog: several formats at once, each checked for parity, with a loading snippet; and
int8 ONNX behind an accuracy gate, its figures those of the command line's `export --int8 --json`."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout)

from engine.errors import UserError
from engine.deploy.export import default_path
from engine.deploy.int8 import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_DROP, Int8Settings
from engine.model import timm_source
from engine.model.architectures import model_kwargs
from engine.model.timm_source import is_timm
from engine.runs.records import RunRecord

FORMAT_LABELS = (
    ("pt", "PyTorch checkpoint (.pt)", "The checkpoint dict with plain torchvision keys; torch.load(weights_only=True)."),
    ("safetensors", "safetensors (.safetensors + .json)", "Weights only, nothing executes on load; metadata inside and beside."),
    ("torchscript", "TorchScript (.torchscript.pt)", "Runs with torch.jit.load, without this project installed."),
    ("onnx", "ONNX (.onnx, opset 17)", "For onnxruntime and other runtimes; dynamic batch size."),
    ("pt2", "torch.export (.pt2)", "An ExportedProgram for torch.export.load; dynamic batch size. Loading it "
                                   "unpickles: this installation records it as its own; elsewhere, load only if trusted."),
)


def loading_snippet(fmt: str, path: str, meta: dict) -> str:
    """Python that loads the exported file and classifies one image, preprocessing included."""
    prep = meta["preprocessing"]
    interpolation = prep.get("interpolation", "bilinear")  # files made before it was recorded: bilinear
    head = (f"# {meta['arch']} · classes {meta['class_names']}\n"
            "from PIL import Image\nimport torch\nfrom torchvision.transforms import v2\n\n"
            f"resize = v2.Resize({prep['resize']}, interpolation=v2.InterpolationMode.{interpolation.upper()})\n"
            f"prep = v2.Compose([v2.PILToTensor(), resize, v2.CenterCrop({prep['crop']}),\n"
            f"                   v2.ToDtype(torch.float32, scale=True), v2.Normalize({prep['mean']}, {prep['std']})])\n"
            "x = prep(Image.open('image.jpg').convert('RGB')).unsqueeze(0)\n")
    if is_timm(meta["arch"]) and fmt in ("pt", "safetensors"):
        body = _timm_body(fmt, path, meta)
    elif fmt == "pt":
        body = ("import torchvision\n"
                f"ckpt = torch.load({path!r}, weights_only=True)\n"
                "# model_kwargs: e.g. GoogLeNet's aux_logits/transform_input, a ViT's image_size (older checkpoints: none)\n"
                "model = torchvision.models.get_model(ckpt['arch'], num_classes=len(ckpt['class_names']),\n"
                "                                     **ckpt.get('model_kwargs', {}))\n"
                "model.load_state_dict(ckpt['model'])\nlogits = model.eval()(x)\n")
    elif fmt == "safetensors":
        body = _safetensors_body(path, meta)
    elif fmt == "torchscript":
        body = f"model = torch.jit.load({path!r})\nlogits = model(x)\n"
    elif fmt == "pt2":
        body = (f"# loading unpickles: only a file you trust\nmodel = torch.export.load({path!r}).module()\n"
                "logits = model(x)\n")
    else:
        body = ("import onnxruntime as ort\n"
                f"session = ort.InferenceSession({path!r})\n"
                "logits = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])\n")
    return head + body + f"print({meta['class_names']!r}[int(logits.argmax())])\n"


def _timm_body(fmt: str, path: str, meta: dict) -> str:
    """timm rebuilds the model by its name and constructor arguments (what the checkpoint's `source` records)."""
    if fmt == "pt":
        return ("import timm\n"
                f"ckpt = torch.load({path!r}, weights_only=True)\n"
                "source = ckpt['source']  # the timm model's name and constructor arguments\n"
                "model = timm.create_model(source['model'], num_classes=len(ckpt['class_names']), **source['model_kwargs'])\n"
                "model.load_state_dict(ckpt['model'])\nlogits = model.eval()(x)\n")
    arguments = "".join(f", {key}={value!r}" for key, value in
                        timm_source.builder_kwargs(meta["arch"], int(meta["preprocessing"]["crop"])).items())
    name = timm_source.model_name(meta["arch"]).partition(".")[0]  # the pretrained tag names weights, not a model
    return ("import timm\nfrom safetensors.torch import load_file\n"
            f"model = timm.create_model({name!r}, num_classes={len(meta['class_names'])}{arguments})\n"
            f"model.load_state_dict(load_file({path!r}))\nlogits = model.eval()(x)\n")


def parity_line(report: dict) -> str:
    return (f"✔ {Path(report['path']).name}: top-1 agreement {report['top1_agreement']:.0%}, largest logit "
            f"difference {report['max_abs_logit_diff']:.1e} on {report['images']} images")


def int8_line(report: dict) -> str:
    """An int8 entry of `export --json` in one line: kept with its figures, or refused and why."""
    figures = (f"top-1 {report['int8_accuracy']:.1%} against fp32 {report['fp32_accuracy']:.1%} on "
               f"{report['images']} validation images, a drop of {report['accuracy_drop']:.2f} points")
    in_fp32 = ", ".join(report.get("excluded_nodes") or [])
    if not report["passed"]:
        return (f"✘ int8 refused: {figures}, more than the {report['max_drop']:g} allowed"
                + (f" (even with {in_fp32} left in fp32)" if in_fp32 else "")
                + f"; {Path(report['path']).name} was not kept")
    return (f"✔ {Path(report['path']).name}: {figures} (at most {report['max_drop']:g} allowed); "
            f"{report['speedup']:.2f}× the fp32 file's speed" + (f"; left in fp32: {in_fp32}" if in_fp32 else ""))


def _safetensors_body(path: str, meta: dict) -> str:
    kwargs = model_kwargs(meta["arch"], int(meta["preprocessing"]["crop"]))
    arguments = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    body = ("import torchvision\nfrom safetensors.torch import load_file\n"
            f"model = torchvision.models.get_model({meta['arch']!r}, num_classes={len(meta['class_names'])}{arguments})\n"
            f"state = load_file({path!r})\n")
    if meta["arch"].startswith("mnasnet"):
        # safetensors keeps no module versions, and MNASNet refuses a state dict without its own.
        body += ("from collections import OrderedDict\n"
                 "state = OrderedDict(state); state._metadata = {'': {'version': type(model)._version}}\n")
    return body + "model.load_state_dict(state)\nlogits = model.eval()(x)\n"


class ExportDialog(QDialog):
    export_requested = Signal(str, list, object)  # folder, formats, Int8Settings or None

    def __init__(self, checkpoint: str, meta: dict, folder: str, parent=None):
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export")
        self.checkpoint, self.meta = checkpoint, meta
        self.boxes: dict[str, QCheckBox] = {}
        formats = QVBoxLayout()
        for fmt, label, tip in FORMAT_LABELS:
            box = QCheckBox(label)
            box.setObjectName(f"exportFormat_{fmt}")
            box.setToolTip(tip)
            box.setChecked(fmt in ("pt", "onnx"))
            box.toggled.connect(self._refresh)
            self.boxes[fmt] = box
            formats.addWidget(box)
        self.int8_box = QCheckBox("int8 (ONNX, gated on accuracy)")
        self.int8_box.setObjectName("exportInt8Check")
        self.int8_box.setToolTip("Also write <name>.int8.onnx, statically quantized on training images, and keep it "
                                 "only if top-1 accuracy on the validation images falls by at most the drop allowed. "
                                 "Needs the run's dataset.")
        self.int8_box.toggled.connect(self._refresh)
        self.max_drop = QDoubleSpinBox()
        self.max_drop.setObjectName("exportMaxDropSpin")
        self.max_drop.setRange(0.0, 100.0)
        self.max_drop.setSingleStep(0.5)
        self.max_drop.setValue(DEFAULT_MAX_DROP)
        self.max_drop.setSuffix(" points")
        self.max_drop.setToolTip("The largest top-1 accuracy drop, in percentage points, the int8 file may have.")
        self.calibration_images = QSpinBox()
        self.calibration_images.setObjectName("exportCalibrationSpin")
        self.calibration_images.setRange(1, 100_000)
        self.calibration_images.setValue(DEFAULT_CALIBRATION_IMAGES)
        self.calibration_images.setToolTip("Training images (taken from every class) that set the int8 ranges.")
        int8_row = QHBoxLayout()
        int8_row.addWidget(self.int8_box)
        int8_row.addWidget(QLabel("max drop"))
        int8_row.addWidget(self.max_drop)
        int8_row.addWidget(QLabel("calibration images"))
        int8_row.addWidget(self.calibration_images)
        int8_row.addStretch(1)
        formats.addLayout(int8_row)
        self.folder_edit = QLineEdit(folder)
        self.folder_edit.setObjectName("exportFolderEdit")
        self.folder_edit.setToolTip("Folder the exported files go into; a new folder is created inside one that exists.")
        self.folder_edit.textChanged.connect(self._refresh)  # the snippet loads from the folder typed
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        self.snippet_format = QComboBox()
        self.snippet_format.setToolTip("Which format the snippet below loads.")
        for fmt, label, _ in FORMAT_LABELS:
            self.snippet_format.addItem(label, fmt)
        self.snippet_format.currentIndexChanged.connect(self._refresh)
        self.snippet = QPlainTextEdit()
        self.snippet.setObjectName("exportSnippet")
        self.snippet.setReadOnly(True)
        self.snippet.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.snippet.setMinimumSize(620, 200)
        self.results = QLabel("Every export is loaded back and compared with the model on validation images.")
        self.results.setObjectName("exportResults")
        self.results.setWordWrap(True)
        self.run_button = QPushButton("Export")
        self.run_button.setObjectName("exportRunButton")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self._export)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.run_button)
        buttons.addWidget(close)
        form = QFormLayout()
        form.addRow("Formats", formats)
        form.addRow("Folder", folder_row)
        form.addRow("Load it with", self.snippet_format)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.snippet, 1)
        layout.addWidget(self.results)
        layout.addLayout(buttons)
        self._refresh()

    def formats(self) -> list[str]:
        return [fmt for fmt, box in self.boxes.items() if box.isChecked()]

    def int8_settings(self) -> Int8Settings | None:
        """What int8 is asked with; None when it is not (it quantizes the ONNX file: ONNX must be chosen)."""
        if not (self.int8_box.isChecked() and self.int8_box.isEnabled()):
            return None
        return Int8Settings(self.max_drop.value(), self.calibration_images.value())

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def _refresh(self) -> None:
        fmt = self.snippet_format.currentData()
        path = str(default_path(Path(self.checkpoint), fmt, Path(self.folder_edit.text().strip()).expanduser()))
        self.snippet.setPlainText(loading_snippet(fmt, path, self.meta))
        self.run_button.setEnabled(bool(self.formats()))
        self.int8_box.setEnabled(self.boxes["onnx"].isChecked())
        for spin in (self.max_drop, self.calibration_images):
            spin.setEnabled(self.int8_settings() is not None)

    def _export(self) -> None:
        self.run_button.setEnabled(False)
        int8 = self.int8_settings()
        self.results.setText("Exporting and checking parity" + (", then quantizing to int8 and measuring both files on "
                                                               "the validation images…" if int8 else "…"))
        self.export_requested.emit(self.folder_edit.text(), self.formats(), int8)

    def show_reports(self, reports: list[dict]) -> None:
        """export --json's entries: a parity report per file, and the int8 entry when asked."""
        self.results.setText("\n".join(int8_line(r) if r.get("format") == "onnx-int8" else parity_line(r)
                                        for r in reports))
        self.run_button.setEnabled(True)

    def show_error(self, message: str) -> None:
        self.results.setText(f"✘ {message}")
        self.run_button.setEnabled(True)


def meta_from_run(run: RunRecord) -> dict:
    """arch, class names and preprocessing for the snippet, from the run's run.json (a small JSON
    file: reading the checkpoint itself on the GUI thread would stall the window)."""
    if run.arch is None or run.class_names is None or run.preprocessing is None:
        raise UserError("the run's run.json does not say which model it trained; export it with the CLI")
    return {"arch": run.arch, "class_names": list(run.class_names), "preprocessing": run.preprocessing}
