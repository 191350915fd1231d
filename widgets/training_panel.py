"""The training panel: hyper-parameters, Start/Pause/Stop/Export, progress with images/s and ETA."""

from __future__ import annotations

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QSpinBox, QStyle, QVBoxLayout)

from engine.config import OPTIMIZERS, SCHEDULES, TrainConfig
from engine.events import format_duration
from widgets.layer_tree import ScientificSpinBox

PRECISION_CHOICES = (("Auto (bf16/fp16 on GPU)", "auto"), ("Off (fp32)", "off"), ("bf16", "bf16"), ("fp16", "fp16"))


class TrainingPanel(QGroupBox):
    def __init__(self, devices: list[tuple[str, str]], parent=None):
        super().__init__("Training", parent)
        t = TrainConfig()

        def spin(name, lo, hi, value, tip, suffix=""):
            box = QSpinBox()
            box.setObjectName(name)
            box.setRange(lo, hi)
            box.setValue(value)
            box.setToolTip(tip)
            box.setSuffix(suffix)
            return box

        def combo(name, items, tip):
            box = QComboBox()
            box.setObjectName(name)
            for text, data in items:
                box.addItem(text, data)
            box.setToolTip(tip)
            return box

        self.epochs_spin = spin("epochsSpin", 1, 10_000, t.epochs, "Passes over the training set.")
        self.batch_spin = spin("batchSizeSpin", 1, 4096, t.batch_size, "Images per optimizer step.")
        self.optimizer_combo = combo("optimizerCombo", [(o, o) for o in OPTIMIZERS],
                                     "adamw: Adam with decoupled weight decay; sgd uses momentum 0.9.")
        self.base_lr_spin = ScientificSpinBox()
        self.base_lr_spin.setObjectName("baseLrSpin")
        self.base_lr_spin.setValue(1e-3)
        self.base_lr_spin.setToolTip("Learning rate of every module that has none of its own (the tree's root).")
        self.weight_decay_spin = QDoubleSpinBox()
        self.weight_decay_spin.setObjectName("weightDecaySpin")
        self.weight_decay_spin.setDecimals(4)
        self.weight_decay_spin.setRange(0, 1)
        self.weight_decay_spin.setSingleStep(0.01)
        self.weight_decay_spin.setValue(t.weight_decay)
        self.weight_decay_spin.setToolTip("Weight decay for every trained parameter.")
        self.schedule_combo = combo("scheduleCombo", [(s, s) for s in SCHEDULES],
                                    "How every group's LR changes over the run.")
        self.schedule_combo.setCurrentText(t.schedule)
        self.warmup_spin = QDoubleSpinBox()
        self.warmup_spin.setObjectName("warmupSpin")
        self.warmup_spin.setRange(0, 100)
        self.warmup_spin.setSingleStep(0.5)
        self.warmup_spin.setSuffix(" ep")
        self.warmup_spin.setToolTip("Linear LR warm-up at the start, in epochs.")
        self.device_combo = combo("deviceCombo", devices, "Where training runs.")
        self.precision_combo = combo("precisionCombo", PRECISION_CHOICES,
                                     "Mixed precision on CUDA: bf16 where supported, else fp16 with loss scaling.")
        self.seed_spin = spin("seedSpin", 0, 2**31 - 1, t.seed, "Seed for the split, initialisation and augmentation.")
        self.compile_check = QCheckBox("Compile (torch.compile)")
        self.compile_check.setObjectName("compileCheck")
        self.compile_check.setToolTip("Compile the model first: the first steps take much longer, later ones run faster.")

        form = QGridLayout()
        rows = (("Epochs", self.epochs_spin, "Batch size", self.batch_spin),
                ("Optimizer", self.optimizer_combo, "Base LR", self.base_lr_spin),
                ("Weight decay", self.weight_decay_spin, "Schedule", self.schedule_combo),
                ("Warm-up", self.warmup_spin, "Seed", self.seed_spin),
                ("Device", self.device_combo, "Precision", self.precision_combo))
        for r, (l1, w1, l2, w2) in enumerate(rows):
            form.addWidget(QLabel(l1), r, 0)
            form.addWidget(w1, r, 1)
            form.addWidget(QLabel(l2), r, 2)
            form.addWidget(w2, r, 3)
        form.addWidget(self.compile_check, len(rows), 1)
        form.setColumnStretch(1, 1)
        form.setColumnStretch(3, 1)

        style = self.style()

        def button(name, text, icon, tip):
            b = QPushButton(style.standardIcon(icon), text)
            b.setObjectName(name)
            b.setToolTip(tip)
            return b

        self.start_button = button("startButton", "Start", QStyle.StandardPixmap.SP_MediaPlay,
                                   "Start training with the settings shown (Ctrl+R).")
        self.pause_button = button("pauseButton", "Pause", QStyle.StandardPixmap.SP_MediaPause,
                                   "Pause or resume after the current batch (Ctrl+P).")
        self.stop_button = button("stopButton", "Stop", QStyle.StandardPixmap.SP_MediaStop,
                                  "Stop after the current batch; the best checkpoint so far is kept (Ctrl+.).")
        self.export_button = button("exportButton", "Export…", QStyle.StandardPixmap.SP_DialogSaveButton,
                                    "Export the best checkpoint: PyTorch, safetensors, TorchScript, ONNX, each checked for parity (Ctrl+E).")
        self.start_button.setDefault(True)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.export_button)

        self.progress = QProgressBar()
        self.progress.setObjectName("trainingProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("Ready")
        self.progress.setTextVisible(True)
        self.progress.setToolTip("Progress over the whole run.")
        self.rate_label = QLabel("")
        self.rate_label.setObjectName("rateLabel")
        self.rate_label.setToolTip("Throughput, time left, and where the last epoch's time went (waiting for data vs computing).")
        self.error_label = QLabel("")
        self.error_label.setObjectName("errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c62828;")
        self.error_label.hide()

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.rate_label)
        layout.addWidget(self.error_label)
        self.set_running(False, can_export=False)

    def set_running(self, running: bool, can_export: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.export_button.setEnabled(can_export and not running)
        self.pause_button.setText("Pause")
        for w in (self.epochs_spin, self.batch_spin, self.optimizer_combo, self.base_lr_spin, self.weight_decay_spin,
                  self.schedule_combo, self.warmup_spin, self.device_combo, self.precision_combo, self.seed_spin,
                  self.compile_check):
            w.setEnabled(not running)

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def show_status(self, text: str, done: int, total: int) -> None:
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"{text} {done}/{total}")
        else:
            self.progress.setRange(0, 0)  # busy indicator
            self.progress.setFormat(text)

    def show_batch(self, event: dict) -> None:
        self.progress.setRange(0, event["total_steps"])
        self.progress.setValue(event["global_step"])
        self.progress.setFormat(f"Epoch {event['epoch']}/{event['epochs']} · step {event['step']}/{event['steps']} · %p%")
        self._rate = f"{event['images_per_second']:,.0f} images/s · ETA {format_duration(event['eta_seconds'])}"
        self.rate_label.setText(self._rate + getattr(self, "_split", ""))

    def show_epoch(self, event: dict) -> None:
        total = max(1e-9, event["seconds"])
        self._split = (f" · last epoch {event['seconds']:.1f} s: data {100 * event['data_seconds'] / total:.0f} %,"
                       f" compute {100 * event['compute_seconds'] / total:.0f} %"
                       + (" (cached features)" if event.get("feature_cache") else ""))
        self.rate_label.setText(getattr(self, "_rate", "") + self._split)

    def show_finished(self, text: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(text)

    def reset_progress(self) -> None:
        self._rate, self._split = "", ""
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("Starting…")
        self.rate_label.setText("")
        self.show_error("")

    def values(self) -> dict:
        return {"epochs": self.epochs_spin.value(), "batch_size": self.batch_spin.value(),
                "optimizer": self.optimizer_combo.currentData(), "weight_decay": self.weight_decay_spin.value(),
                "schedule": self.schedule_combo.currentData(), "warmup_epochs": self.warmup_spin.value(),
                "device": self.device_combo.currentData(), "precision": self.precision_combo.currentData(),
                "seed": self.seed_spin.value(), "compile": self.compile_check.isChecked()}

    def set_values(self, t: TrainConfig, base_lr: float) -> None:
        self.epochs_spin.setValue(t.epochs)
        self.batch_spin.setValue(t.batch_size)
        self.optimizer_combo.setCurrentIndex(max(0, self.optimizer_combo.findData(t.optimizer)))
        self.weight_decay_spin.setValue(t.weight_decay)
        self.schedule_combo.setCurrentIndex(max(0, self.schedule_combo.findData(t.schedule)))
        self.warmup_spin.setValue(t.warmup_epochs)
        index = self.device_combo.findData(t.device)
        self.device_combo.setCurrentIndex(index if index >= 0 else 0)
        self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData(t.precision)))
        self.seed_spin.setValue(t.seed)
        self.compile_check.setChecked(t.compile)
        self.base_lr_spin.setValue(base_lr)

