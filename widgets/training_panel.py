"""The training panel: hyper-parameters, Start/Pause/Stop/Export, progress with images/s and ETA.

It shows what it is given (a TrainConfig, the base LR, the engine's typed events) and reports the
person's edits and clicks through its signals.
"""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QSpinBox, QStyle, QVBoxLayout)

from engine.config import HEAD_ONLY_BASE_LR, OPTIMIZERS, SCHEDULES, PlanConfig, TrainConfig
from engine.task_figures import format_figure, headline
from engine.events import BatchEvent, EpochEvent, FitResult, format_duration
from widgets.layer_tree import ScientificSpinBox

# (text, value, what it means): short texts keep the panel narrow; the meaning is each entry's tooltip.
PRECISION_CHOICES = (
    ("Auto", "auto", "On a GPU: bf16 where supported, else fp16; on a CPU with native bf16 (AVX512-BF16, AMX): "
                     "bf16; elsewhere off (fp32)."),
    ("Off (fp32)", "off", "Full precision (fp32) everywhere."),
    ("bf16", "bf16", "bfloat16 autocast: fp32's range, fewer digits; no loss scaling needed."),
    ("fp16", "fp16", "float16 autocast with loss scaling (CUDA)."),
)
# --adapt-norm: what a frozen trunk's BatchNorm statistics are trained and checked with.
ADAPT_NORM_CHOICES = (
    ("Auto (measure)", "auto", "Feature extraction: fit the head on the trunk's features with the loaded statistics and "
                               "with statistics adapted to the training images (AdaBN); keep the better validation "
                               "balanced accuracy (a tie keeps them as loaded). The run says which and by how much."),
    ("Adapt (AdaBN)", "on", "Before training, one pass over the training images re-estimates every BatchNorm layer's "
                            "statistics (no weight changes); the freeze proof then holds the run to them."),
    ("As loaded", "off", "Frozen norm layers keep their statistics exactly as loaded."),
)
COMBO_MIN_CHARACTERS = 8  # a narrow window elides a long entry (a GPU's name) instead of clipping the panel
HOW_IT_ENDED = {"user": "Stopped", "early-stopping": "Stopped early", "completed": "Finished"}


def result_line(result: FitResult) -> str:
    """E.g. "Finished after 5 epoch(s) · best val accuracy 93.8 % (epoch 4)", or "best val mAP 0.812"."""
    name, best = headline(result.task, result.best_val_accuracy, result.best_val_metrics)
    figure = ("accuracy " if name == "accuracy" else "") + format_figure(name, best)
    best_text = f" · best val {figure} (epoch {result.best_epoch})" if best is not None else ""
    skipped = f" · {len(result.skipped)} file(s) skipped" if result.skipped else ""
    return f"{HOW_IT_ENDED.get(result.stopped, 'Ended')} after {result.epochs_run} epoch(s){best_text}{skipped}"


PROCESSES_ROLE = Qt.ItemDataRole.UserRole + 1  # a device entry's process count, beside its device


def fit_narrow(box: QComboBox) -> None:
    """A combo box as narrow as a few characters allow: its long entries are elided, not the panel clipped."""
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(COMBO_MIN_CHARACTERS)


class TrainingPanel(QGroupBox):
    train_edited = Signal(dict)  # the TrainConfig fields the person changed, e.g. {"epochs": 7}
    base_lr_edited = Signal(float)
    start_clicked = Signal()
    pause_clicked = Signal(bool)  # True: pause
    stop_clicked = Signal()
    export_clicked = Signal()
    lr_finder_clicked = Signal()

    def __init__(self, devices: list[tuple[str, str, int]], parent=None):
        """`devices`: (label, device, processes[, note]) per entry, e.g. ("CPU — 2 processes", "cpu", 2);
        a note (what the device cannot do) joins the entry's tooltip."""
        super().__init__("Training", parent)
        t = TrainConfig()

        def spin(name, lo, hi, value, tip, field):
            box = QSpinBox()
            box.setObjectName(name)
            box.setRange(lo, hi)
            box.setValue(value)
            box.setToolTip(tip)
            box.valueChanged.connect(lambda v: self.train_edited.emit({field: v}))
            return box

        def combo(name, items, tip, field):
            box = QComboBox()
            box.setObjectName(name)
            for text, data, *item_tip in items:
                box.addItem(text, data)
                if item_tip:
                    box.setItemData(box.count() - 1, item_tip[0], Qt.ItemDataRole.ToolTipRole)
            box.setToolTip(tip)
            fit_narrow(box)
            box.currentIndexChanged.connect(lambda: self.train_edited.emit({field: box.currentData()}))
            return box

        self.epochs_spin = spin("epochsSpin", 1, 10_000, t.epochs, "Passes over the training set.", "epochs")
        self.batch_spin = spin("batchSizeSpin", 1, 4096, t.batch_size, "Images per optimizer step.", "batch_size")
        self.optimizer_combo = combo("optimizerCombo", [(o, o) for o in OPTIMIZERS],
                                     "adamw: Adam with decoupled weight decay; sgd uses momentum 0.9.", "optimizer")
        self.base_lr_spin = ScientificSpinBox()
        self.base_lr_spin.setObjectName("baseLrSpin")
        self.base_lr_spin.setValue(1e-3)
        self.base_lr_spin.setToolTip(f"Learning rate of every module that has none of its own (the tree's root). "
                                     f"A preset brings its default ({HEAD_ONLY_BASE_LR:g} for feature extraction, "
                                     f"{PlanConfig.base_lr:g} otherwise) unless you typed your own.")
        self.base_lr_spin.valueChanged.connect(self.base_lr_edited)
        self.weight_decay_spin = QDoubleSpinBox()
        self.weight_decay_spin.setObjectName("weightDecaySpin")
        self.weight_decay_spin.setDecimals(4)
        self.weight_decay_spin.setRange(0, 1)
        self.weight_decay_spin.setSingleStep(0.01)
        self.weight_decay_spin.setValue(t.weight_decay)
        self.weight_decay_spin.setKeyboardTracking(False)
        self.weight_decay_spin.setToolTip("Weight decay for every trained parameter.")
        self.weight_decay_spin.valueChanged.connect(lambda v: self.train_edited.emit({"weight_decay": v}))
        self.schedule_combo = combo("scheduleCombo", [(s, s) for s in SCHEDULES],
                                    "How every group's LR changes over the run.", "schedule")
        self.warmup_spin = QDoubleSpinBox()
        self.warmup_spin.setObjectName("warmupSpin")
        self.warmup_spin.setRange(0, 100)
        self.warmup_spin.setSingleStep(0.5)
        self.warmup_spin.setSuffix(" ep")
        self.warmup_spin.setToolTip("Linear LR warm-up at the start, in epochs.")
        self.warmup_spin.valueChanged.connect(lambda v: self.train_edited.emit({"warmup_epochs": v}))
        self.device_combo = QComboBox()
        self.device_combo.setObjectName("deviceCombo")
        fit_narrow(self.device_combo)
        for text, device, processes, *note in devices:
            self.device_combo.addItem(text, device)
            last = self.device_combo.count() - 1
            self.device_combo.setItemData(last, processes, PROCESSES_ROLE)
            self.device_combo.setItemData(last, f"{text}. {note[0]}" if note else text, Qt.ItemDataRole.ToolTipRole)
        self.device_combo.setToolTip(
            "Where training runs. Several processes train one model with DistributedDataParallel (each takes its "
            "share of every batch), started as child processes: the window stays free, Pause and Stop still work.")
        self.device_combo.currentIndexChanged.connect(lambda: self.train_edited.emit(
            {"device": self.device_combo.currentData(), "processes": self.device_combo.currentData(PROCESSES_ROLE)}))
        self.precision_combo = combo("precisionCombo", PRECISION_CHOICES,
                                     "Mixed precision. Auto: on CUDA bf16 where supported, else fp16 with loss scaling; "
                                     "on a CPU with native bf16 (AVX512-BF16, AMX) bf16, elsewhere fp32. "
                                     "Checkpoints are always saved in fp32.",
                                     "precision")
        self.seed_spin = spin("seedSpin", 0, 2**31 - 1, t.seed, "Seed for the split, initialisation and augmentation.",
                              "seed")
        self.compile_check = QCheckBox("Compile")
        self.compile_check.setObjectName("compileCheck")
        self.compile_check.setToolTip("torch.compile the model first: the first steps take much longer, later ones run faster.")
        self.compile_check.toggled.connect(lambda on: self.train_edited.emit({"compile": on}))
        self.feature_views_spin = spin(
            "featureViewsSpin", 0, 64, t.feature_views,
            "Frozen trunk with augmentation: the trunk's features of this many augmented views of every image are "
            "computed once, and each epoch trains the head on one of them per image. 0: augmented images go "
            "through the trunk every epoch (slow).", "feature_views")
        self.adapt_norm_combo = combo(
            "adaptNormCombo", ADAPT_NORM_CHOICES,
            "Normalization statistics of a frozen trunk (AdaBN). Auto: measured at Start with cached features, "
            "the better of as loaded and adapted to the training images is kept; the run says which.",
            "adapt_norm")
        self._editors = (self.epochs_spin, self.batch_spin, self.optimizer_combo, self.base_lr_spin,
                         self.weight_decay_spin, self.schedule_combo, self.warmup_spin, self.device_combo,
                         self.precision_combo, self.seed_spin, self.compile_check, self.feature_views_spin,
                         self.adapt_norm_combo)

        form = QGridLayout()
        rows = ((("Epochs", self.epochs_spin), ("Batch size", self.batch_spin)),
                (("Optimizer", self.optimizer_combo), ("Base LR", self.base_lr_spin)),
                (("Weight decay", self.weight_decay_spin), ("Schedule", self.schedule_combo)),
                (("Warm-up", self.warmup_spin), ("Seed", self.seed_spin)),
                (("Device", self.device_combo), ("Precision", self.precision_combo)),
                (("Feature views", self.feature_views_spin), ("Norm stats", self.adapt_norm_combo)))
        for r, pairs in enumerate(rows):
            for c, (label, widget) in enumerate(pairs):
                form.addWidget(QLabel(label), r, 2 * c)
                form.addWidget(widget, r, 2 * c + 1)
        checks = QHBoxLayout()  # a check box on a row of its own: the panel stays narrow
        checks.addWidget(self.compile_check)
        checks.addStretch(1)
        form.addLayout(checks, len(rows), 0, 1, 4)
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
        self.lr_finder_button = QPushButton("Find LR…")
        self.lr_finder_button.setObjectName("lrFinderButton")
        self.lr_finder_button.setToolTip("LR range test: sweep one multiplier over every layer's LR (their ratios "
                                         "kept) and apply the suggested one. Nothing is trained for good.")
        self.lr_finder_button.clicked.connect(self.lr_finder_clicked)
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start_clicked)
        self.pause_button.clicked.connect(lambda: self.pause_clicked.emit(not self._paused))
        self.stop_button.clicked.connect(self.stop_clicked)
        self.export_button.clicked.connect(self.export_clicked)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.lr_finder_button)
        buttons.addWidget(self.export_button)

        self.progress = QProgressBar()
        self.progress.setObjectName("trainingProgress")
        self.progress.setTextVisible(True)
        self.progress.setToolTip("Progress over the whole run.")
        self.rate_label = QLabel("")
        self.rate_label.setObjectName("rateLabel")
        self.rate_label.setWordWrap(True)
        # A line kept for it before any run: the window fits its panels to their heights when shown,
        # and a run's first line must not push the progress bar out of view.
        self.rate_label.setMinimumHeight(self.rate_label.fontMetrics().lineSpacing())
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
        self._paused = False
        self._progress_text = "Ready"  # what the bar says, before any "Paused · "
        self._throughput = ""  # "123 images/s", from the latest batch
        self._eta = ""  # "ETA 00:42", only while a run goes on
        self._epoch_split = ""  # where the last epoch's time went
        self._set_progress(0, 1, "Ready")
        self.set_run_controls(running=False, can_export=False)

    # --- settings --------------------------------------------------------------------------------

    def show_train(self, t: TrainConfig) -> None:
        """The training settings; the boxes say nothing back (this is not an edit)."""
        for widget in self._editors:
            widget.blockSignals(True)
        try:
            self.epochs_spin.setValue(t.epochs)
            self.batch_spin.setValue(t.batch_size)
            self.optimizer_combo.setCurrentIndex(max(0, self.optimizer_combo.findData(t.optimizer)))
            self.weight_decay_spin.setValue(t.weight_decay)
            self.schedule_combo.setCurrentIndex(max(0, self.schedule_combo.findData(t.schedule)))
            self.warmup_spin.setValue(t.warmup_epochs)
            self.device_combo.setCurrentIndex(max(0, self._device_index(t.device, t.processes)))
            self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData(t.precision)))
            self.seed_spin.setValue(t.seed)
            self.compile_check.setChecked(t.compile)
            self.feature_views_spin.setValue(t.feature_views)
            self.adapt_norm_combo.setCurrentIndex(max(0, self.adapt_norm_combo.findData(t.adapt_norm)))
        finally:
            for widget in self._editors:
                widget.blockSignals(False)

    def _device_index(self, device: str, processes: int) -> int:
        for i in range(self.device_combo.count()):
            if self.device_combo.itemData(i) == device and self.device_combo.itemData(i, PROCESSES_ROLE) == processes:
                return i
        return self.device_combo.findData(device)  # a process count not offered here: that device alone

    def show_base_lr(self, lr: float) -> None:
        with QSignalBlocker(self.base_lr_spin):
            self.base_lr_spin.setValue(lr)

    def set_run_controls(self, running: bool, can_export: bool) -> None:
        """Buttons for the run's state; while a run trains its settings are shown read-only."""
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.export_button.setEnabled(can_export and not running)
        self.lr_finder_button.setEnabled(not running)
        for widget in self._editors:
            widget.setEnabled(not running)
        if not running:
            self.show_paused(False)

    # --- progress --------------------------------------------------------------------------------

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def show_status(self, text: str, done: int, total: int) -> None:
        if total:
            self._set_progress(done, total, f"{text} {done}/{total}")
        else:
            self._set_progress(0, 0, text)  # a busy indicator

    def show_batch(self, event: BatchEvent) -> None:
        self._set_progress(event.global_step, event.total_steps,
                           f"Epoch {event.epoch}/{event.epochs} · step {event.step}/{event.steps} · %p%")
        self._throughput = f"{event.images_per_second:,.0f} images/s"
        self._eta = f"ETA {format_duration(event.eta_seconds)}"
        self._show_rate()

    def show_epoch(self, event: EpochEvent) -> None:
        total = max(1e-9, event.seconds)
        self._epoch_split = (f"last epoch {event.seconds:.1f} s: data {100 * event.data_seconds / total:.0f} %,"
                             f" compute {100 * event.compute_seconds / total:.0f} %"
                             + (" (cached features)" if event.feature_cache else ""))
        self._show_rate()

    def show_paused(self, paused: bool) -> None:
        """Paused stays on the bar until resumed, whatever the batch still in flight reports."""
        self._paused = paused
        self.pause_button.setText("Resume" if paused else "Pause")
        self._set_progress(self.progress.value(), self.progress.maximum(), self._progress_text)
        self._show_rate()  # no time left to estimate while nothing moves

    def show_stopping(self) -> None:
        self._set_progress(self.progress.value(), self.progress.maximum(), "Stopping after this batch…")

    def show_finished(self, text: str) -> None:
        """The run is over: the bar says how it ended; no rate or time left describes a run that stopped
        (the last epoch's split of time still holds)."""
        self._throughput = self._eta = ""
        self._show_rate()
        self._set_progress(1, 1, text)

    def reset_progress(self, text: str = "Starting…") -> None:
        self._throughput = self._eta = self._epoch_split = ""
        self._show_rate()
        self._set_progress(0, 1, text)
        self.show_error("")

    def _set_progress(self, value: int, maximum: int, text: str) -> None:
        self._progress_text = text
        self.progress.setRange(0, maximum)
        self.progress.setValue(value)
        self.progress.setFormat(f"Paused · {text}" if self._paused else text)

    def _show_rate(self) -> None:
        eta = "paused" if self._paused and self._eta else self._eta  # an ETA would count down a run that waits
        self.rate_label.setText(" · ".join(part for part in (self._throughput, eta, self._epoch_split) if part))
