"""The main window: layout and signal wiring only.

Data, model and training panels on the left and right, live plots below the training controls.
Scanning a folder and building a layer tree run as background tasks; training runs in the
TrainingController's QThread. Start freezes every control's value into one immutable RunConfig.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from PySide6.QtCore import QSettings, Qt, Slot
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (QApplication, QFileDialog, QLabel, QMainWindow, QMessageBox, QSplitter, QVBoxLayout,
                               QWidget)

from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig, load_project, save_project
from engine.data import scan_dataset
from engine.demo import ensure_demo_dataset
from engine.errors import UserError
from engine.export import default_path, export, parity_batch
from engine.models import build_model, weights_cache_path
from engine.run_folder import RunFolder
from app.worker import BackgroundTasks, TrainingController
from widgets.data_panel import DataPanel, make_thumbnail
from widgets.export_dialog import ExportDialog, checkpoint_meta
from widgets.model_panel import ModelPanel
from widgets.plots import TrainingPlots
from widgets.training_panel import TrainingPanel

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
PROJECT_FILTER = "Transfer Studio project (*.tsproj.json *.json)"
MAX_RECENT = 8


def available_devices() -> list[tuple[str, str]]:
    devices = [("Auto", "auto"), ("CPU", "cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append((f"cuda:{i} — {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
    return devices


def scan_with_thumbnails(folder: str, val_fraction: float, seed: int):
    """Runs in a background task: the scan plus three thumbnails per class."""
    scan = scan_dataset(folder, val_fraction, seed)
    thumbnails = {}
    for label, name in enumerate(scan.class_names):
        paths = [s.path for s in scan.train if s.label == label][:3]
        thumbnails[name] = [make_thumbnail(p) for p in paths]
    return scan.summary(), thumbnails


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, confirm_close: bool = True):
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("Transfer Studio")
        self.settings = settings or QSettings()
        self.confirm_close = confirm_close
        self.tasks = BackgroundTasks(self)
        self.controller = TrainingController(self)
        self.data_folder = ""
        self.scan_summary: dict | None = None
        self.num_classes = 0
        self.last_checkpoint: str | None = None
        self.run_folder = ""
        self._pending_plan: PlanConfig | None = None  # restored from a project once the tree exists

        self.data_panel = DataPanel()
        self.model_panel = ModelPanel()
        self.training_panel = TrainingPanel(available_devices())
        self.plots = TrainingPlots()
        self._build_layout()
        self._build_menus()
        self._build_status_bar()
        self._connect()
        self.setAcceptDrops(True)
        self._refresh_device_label()
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 900)

    @property
    def is_ready(self) -> bool:
        """A dataset is scanned and its model's layer tree is built: Start can run."""
        return self.scan_summary is not None and self.model_panel.tree_model.model_info is not None

    # --- construction -----------------------------------------------------------------------------

    def _build_layout(self) -> None:
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.data_panel)
        left.addWidget(self.model_panel)
        left.setStretchFactor(1, 2)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.training_panel)
        right_layout.addWidget(self.plots, 1)
        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(0, 1)
        main.setStretchFactor(1, 1)
        main.setSizes([700, 700])
        self.setCentralWidget(main)

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip)
        action.setToolTip(tip)
        action.triggered.connect(slot)
        return action

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self._action("&New", self.new_project, QKeySequence.StandardKey.New,
                                         "Start over on the demo dataset with default settings."))
        file_menu.addAction(self._action("&Open project…", self._open_project_dialog, QKeySequence.StandardKey.Open,
                                         "Open a project file."))
        file_menu.addAction(self._action("Open &dataset folder…", self.data_panel._browse, "Ctrl+Shift+O",
                                         "Choose the dataset folder."))
        self.recent_menu = file_menu.addMenu("Recent projects")
        file_menu.addAction(self._action("&Save project…", self._save_project_dialog, QKeySequence.StandardKey.Save,
                                         "Save dataset, model, plan and hyper-parameters to a project file."))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Export checkpoint…", self.export_checkpoint, "Ctrl+E",
                                         "Export the run's best checkpoint to PyTorch, safetensors, TorchScript or ONNX."))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit, "Quit Transfer Studio."))
        train_menu = self.menuBar().addMenu("&Train")
        train_menu.addAction(self._action("&Start", self.start_training, "Ctrl+R", "Start training."))
        train_menu.addAction(self._action("&Pause / resume", self.toggle_pause, "Ctrl+P", "Pause or resume training."))
        train_menu.addAction(self._action("S&top", self.stop_training, "Ctrl+.", "Stop training after this batch."))
        train_menu.addAction(self._action("&Continue training", self.continue_training, "Ctrl+Shift+R",
                                          "Resume the last run from its last completed epoch up to the Epochs total."))
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("Which strategy?", self._show_strategy_guide, "F1",
                                         "When to use feature extraction, fine-tuning or gradual unfreezing."))
        self._refresh_recent_menu()

    def _build_status_bar(self) -> None:
        self.device_label = QLabel()
        self.device_label.setObjectName("deviceStatusLabel")
        self.precision_label = QLabel()
        self.precision_label.setObjectName("precisionStatusLabel")
        self.run_label = QLabel("No run yet")
        self.run_label.setObjectName("runFolderLabel")
        self.run_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar = self.statusBar()
        bar.addPermanentWidget(self.device_label)
        bar.addPermanentWidget(self.precision_label)
        bar.addPermanentWidget(self.run_label)

    def _connect(self) -> None:
        dp, mp, tp, c = self.data_panel, self.model_panel, self.training_panel, self.controller
        dp.folder_chosen.connect(self.open_folder)
        dp.demo_requested.connect(self.open_demo_dataset)
        dp.val_spin.valueChanged.connect(self._rescan)
        mp.arch_changed.connect(self._rebuild_tree)
        mp.weights_changed.connect(self._check_weights_available)
        mp.preset_requested.connect(self.apply_preset)
        mp.factor_spin.valueChanged.connect(self._preset_parameters_changed)
        mp.every_spin.valueChanged.connect(self._preset_parameters_changed)
        tp.base_lr_spin.valueChanged.connect(self._base_lr_changed)
        tp.weight_decay_spin.valueChanged.connect(mp.tree_model.set_weight_decay)
        tp.device_combo.currentIndexChanged.connect(self._refresh_device_label)
        tp.precision_combo.currentIndexChanged.connect(self._refresh_device_label)
        tp.start_button.clicked.connect(self.start_training)
        tp.pause_button.clicked.connect(self.toggle_pause)
        tp.stop_button.clicked.connect(self.stop_training)
        tp.export_button.clicked.connect(self.export_checkpoint)
        c.run_started.connect(self._on_run_started)
        c.status_changed.connect(tp.show_status)
        c.batch_finished.connect(self._on_batch)
        c.epoch_finished.connect(self._on_epoch)
        c.run_finished.connect(self._on_run_finished)
        c.run_failed.connect(self._on_run_failed)
        c.running_changed.connect(lambda running: tp.set_running(running, self.last_checkpoint is not None))

    # --- dataset --------------------------------------------------------------------------------

    @Slot(str)
    def open_folder(self, folder: str) -> None:
        if not folder:
            return
        self.data_folder = folder
        self.settings.setValue("paths/last_dataset", folder)
        self.data_panel.show_scanning(folder)
        val, seed = self.data_panel.val_spin.value(), self.training_panel.seed_spin.value()
        self.tasks.submit("scan", lambda: scan_with_thumbnails(folder, val, seed), self._on_scanned, self._on_scan_failed)

    @Slot()
    def open_demo_dataset(self) -> None:
        self.data_panel.show_scanning("(making the demo dataset…)")
        self.tasks.submit("demo", lambda: str(ensure_demo_dataset()), self.open_folder, self._on_scan_failed)

    def _rescan(self) -> None:
        if self.data_folder and not self.controller.is_running:
            self.open_folder(self.data_folder)

    def _on_scanned(self, result) -> None:
        summary, thumbnails = result
        self.scan_summary = summary
        self.data_panel.show_scan(summary, thumbnails)
        classes = len(summary["classes"])
        if classes != self.num_classes:
            self.num_classes = classes
            self._rebuild_tree()

    def _on_scan_failed(self, message: str) -> None:
        self.scan_summary = None
        self.data_panel.show_error(message)

    # --- model and plan ---------------------------------------------------------------------------

    def _rebuild_tree(self) -> None:
        arch, classes = self.model_panel.arch(), max(2, self.num_classes or 2)
        self.model_panel.summary_label.setText(f"Building {arch}…")
        self.tasks.submit("model", lambda: build_model(arch, classes, "none").info, self._on_model_info,
                          self._on_model_failed)
        self._check_weights_available()

    def _on_model_info(self, info) -> None:
        tree = self.model_panel.tree_model
        config = self._pending_plan or replace(tree.plan_config, base_lr=self.training_panel.base_lr_spin.value())
        self._pending_plan = None
        try:
            tree.set_model_info(info, config, self.training_panel.weight_decay_spin.value())
        except UserError as exc:  # a project's edit that does not fit this model
            self.training_panel.show_error(str(exc))
            tree.set_model_info(info, PlanConfig(strategy=config.strategy, base_lr=config.base_lr))

    def _on_model_failed(self, message: str) -> None:
        self.model_panel.summary_label.setText(message)

    def _check_weights_available(self) -> None:
        weights, arch = self.model_panel.weights(), self.model_panel.arch()
        note = ""
        if weights == "imagenet":
            path = weights_cache_path(arch)
            if path is None:
                note = f"{arch} has no ImageNet weights in torchvision"
            elif not path.exists():
                note = f"ImageNet weights not cached yet: downloaded on Start, or put {path.name} into {path.parent}"
        self.model_panel.weights_combo.setToolTip(note or "Start from ImageNet weights, random init, or a file.")
        self.statusBar().showMessage(note, 15000)
        if weights not in ("imagenet", "none"):
            classes = max(2, self.num_classes or 2)
            self.tasks.submit("weights", lambda: build_model(arch, classes, weights).notes,
                              self._on_weights_checked, self._on_weights_failed)

    def _on_weights_checked(self, notes: list[str]) -> None:
        self.training_panel.show_error("")
        self.statusBar().showMessage(" · ".join(notes), 15000)

    def _on_weights_failed(self, message: str) -> None:
        self.training_panel.show_error(message)

    @Slot(str)
    def apply_preset(self, strategy: str) -> None:
        self.model_panel.tree_model.set_plan_config(PlanConfig(
            strategy=strategy, base_lr=self.training_panel.base_lr_spin.value(),
            discriminative_factor=self.model_panel.factor_spin.value(),
            gradual_every=self.model_panel.every_spin.value()))

    def _preset_parameters_changed(self) -> None:
        tree = self.model_panel.tree_model
        tree.set_plan_config(replace(tree.plan_config, discriminative_factor=self.model_panel.factor_spin.value(),
                                     gradual_every=self.model_panel.every_spin.value()))

    def _base_lr_changed(self, value: float) -> None:
        tree = self.model_panel.tree_model
        tree.set_plan_config(replace(tree.plan_config, base_lr=value))

    # --- the run config -----------------------------------------------------------------------------

    def current_config(self) -> RunConfig:
        data = self.data_panel.values()
        return RunConfig(
            data=DataConfig(root=self.data_folder, **data),
            model=ModelConfig(arch=self.model_panel.arch(), weights=self.model_panel.weights()),
            plan=self.model_panel.tree_model.plan_config,
            train=TrainConfig(**self.training_panel.values()),
            out_dir=self.run_folder,
        )

    def apply_config(self, config: RunConfig) -> None:
        """Restore every control from a config (the project file's content)."""
        self.data_panel.set_values(config.data)
        self.training_panel.set_values(config.train, config.plan.base_lr)
        self.model_panel.factor_spin.setValue(config.plan.discriminative_factor)
        self.model_panel.every_spin.setValue(config.plan.gradual_every)
        self.model_panel.set_weights(config.model.weights)
        self._pending_plan = config.plan
        arch_changed = config.model.arch != self.model_panel.arch()
        self.model_panel.set_arch(config.model.arch)  # rebuilds the tree, which applies the pending plan
        if config.data.root:
            self.num_classes = 0  # the rescan rebuilds the tree for the dataset's class count
            self.open_folder(config.data.root)
        elif not arch_changed:
            self._rebuild_tree()

    def runs_root(self) -> Path:
        return Path(self.settings.value("paths/runs", str(Path.home() / "TransferStudio" / "runs")))

    # --- training -------------------------------------------------------------------------------------

    @Slot()
    def start_training(self) -> None:
        if self.controller.is_running:
            return
        if not self.data_folder or self.scan_summary is None:
            self.training_panel.show_error("Choose a dataset folder first (or use the demo dataset).")
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_folder = str(self.runs_root() / f"{self.model_panel.arch()}-{stamp}")
        config = self.current_config()
        try:
            config.validate()
        except UserError as exc:
            self.training_panel.show_error(str(exc))
            return
        self.plots.clear()
        self.training_panel.reset_progress()
        self.last_checkpoint = None
        self.run_label.setText(f"Run: {self.run_folder}")
        self.controller.start(config)

    @Slot()
    def toggle_pause(self) -> None:
        if not self.controller.is_running:
            return
        if self.controller.paused:
            self.controller.resume()
            self.training_panel.pause_button.setText("Pause")
        else:
            self.controller.pause()
            self.training_panel.pause_button.setText("Resume")
            self.training_panel.progress.setFormat("Paused · " + self.training_panel.progress.format())

    @Slot()
    def stop_training(self) -> None:
        if self.controller.is_running:
            self.controller.stop()
            self.training_panel.progress.setFormat("Stopping after this batch…")

    @Slot(dict)
    def _on_run_started(self, info: dict) -> None:
        self.device_label.setText(f"Device: {info['device_name']}")
        self.precision_label.setText(f"Mixed precision: {'off' if info['precision'] == 'fp32' else info['precision']}")
        self.statusBar().showMessage(info["feature_cache"])  # stays: says whether features are cached

    @Slot(dict)
    def _on_batch(self, event: dict) -> None:
        self.plots.add_batch(event)
        self.training_panel.show_batch(event)

    @Slot(dict)
    def _on_epoch(self, event: dict) -> None:
        self.plots.add_epoch(event)
        self.training_panel.show_epoch(event)
        if event["is_best"]:
            self.last_checkpoint = str(Path(self.run_folder) / "checkpoint.pt")

    @Slot(dict)
    def _on_run_finished(self, summary: dict) -> None:
        self.last_checkpoint = summary["checkpoint"]
        best = summary["best_val_accuracy"]
        how = {"user": "Stopped", "early-stopping": "Stopped early", "completed": "Finished"}[summary["stopped"]]
        best_text = f" · best val accuracy {best:.1%} (epoch {summary['best_epoch']})" if best is not None else ""
        skipped = f" · {len(summary['skipped'])} file(s) skipped" if summary["skipped"] else ""
        self.training_panel.show_finished(f"{how} after {summary['epochs_run']} epoch(s){best_text}{skipped}")
        self.training_panel.set_running(False, self.last_checkpoint is not None)

    @Slot(str)
    def _on_run_failed(self, message: str) -> None:
        self.training_panel.show_error(message)
        self.training_panel.show_finished("Failed")
        self.training_panel.set_running(False, self.last_checkpoint is not None)
        box = QMessageBox(QMessageBox.Icon.Critical, "Training failed", message, parent=self)
        box.setObjectName("trainingFailedBox")
        box.open()  # window-modal but not blocking: the event loop keeps running

    # --- export and projects ---------------------------------------------------------------------------

    @Slot()
    def export_checkpoint(self) -> None:
        """Open the Export dialog for the run's best checkpoint."""
        if not self.last_checkpoint or not Path(self.last_checkpoint).exists():
            self.training_panel.show_error("No checkpoint to export yet: train first.")
            return
        try:
            meta = checkpoint_meta(self.last_checkpoint)
        except UserError as exc:
            self.training_panel.show_error(str(exc))
            return
        folder = self.settings.value("paths/last_export", str(Path(self.last_checkpoint).parent))
        dialog = ExportDialog(self.last_checkpoint, meta, folder, self)
        dialog.export_requested.connect(
            lambda f, formats: self.export_files(f, formats, dialog.show_reports, dialog.show_error))
        self.export_dialog = dialog
        dialog.open()

    def export_files(self, folder: str, formats: list[str], on_done=None, on_error=None) -> None:
        """Export in the background; every file is checked for parity before it counts as done."""
        checkpoint = Path(self.last_checkpoint)
        self.settings.setValue("paths/last_export", folder)

        def job():
            batch = parity_batch(checkpoint)
            return [export(checkpoint, fmt, default_path(checkpoint, fmt, Path(folder)), batch).to_dict()
                    for fmt in formats]

        def done(reports):
            self.statusBar().showMessage(f"Exported {len(reports)} file(s) to {folder}, all passed the parity check", 10000)
            if on_done:
                on_done(reports)

        self.tasks.submit("export", job, done, on_error or self.training_panel.show_error)

    @Slot()
    def continue_training(self) -> None:
        """Resume the last run from its last completed epoch up to the Epochs box's total."""
        if self.controller.is_running:
            return
        if not self.run_folder or not RunFolder(self.run_folder).can_resume():
            self.training_panel.show_error("No run to continue: a run saves its state after each completed epoch.")
            return
        try:
            config = RunFolder(self.run_folder).load_config()
        except UserError as exc:
            self.training_panel.show_error(str(exc))
            return
        config = replace(config, train=replace(config.train, epochs=self.training_panel.epochs_spin.value()))
        self.training_panel.reset_progress()
        self.controller.start(config, resume=True)

    def save_project(self, path: str) -> None:
        save_project(path, replace(self.current_config(), out_dir=""))
        self._remember_recent(path)
        self.statusBar().showMessage(f"Saved {path}", 5000)

    def open_project(self, path: str) -> None:
        try:
            config = load_project(path)
        except UserError as exc:
            self.training_panel.show_error(str(exc))
            return
        self.apply_config(config)
        self._remember_recent(path)
        self.setWindowTitle(f"Transfer Studio — {Path(path).name}")

    @Slot()
    def new_project(self) -> None:
        if self.controller.is_running:
            return
        self.apply_config(RunConfig())
        self.open_demo_dataset()
        self.setWindowTitle("Transfer Studio")

    def _open_project_dialog(self) -> None:
        start = self.settings.value("paths/last_project_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self, "Open project", start, PROJECT_FILTER)
        if path:
            self.open_project(path)

    def _save_project_dialog(self) -> None:
        start = self.settings.value("paths/last_project_dir", str(Path.home()))
        path, _ = QFileDialog.getSaveFileName(self, "Save project", str(Path(start) / "project.tsproj.json"),
                                              PROJECT_FILTER)
        if path:
            self.save_project(path)

    def _remember_recent(self, path: str) -> None:
        recent = [p for p in (self.settings.value("recent_projects") or []) if p != path]
        self.settings.setValue("recent_projects", [path] + recent[: MAX_RECENT - 1])
        self.settings.setValue("paths/last_project_dir", str(Path(path).parent))
        self._refresh_recent_menu()

    def _refresh_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.value("recent_projects") or []
        if isinstance(recent, str):
            recent = [recent]
        for path in recent:
            self.recent_menu.addAction(path, lambda p=path: self.open_project(p))
        self.recent_menu.setEnabled(bool(recent))

    # --- window behaviour ---------------------------------------------------------------------------------

    def _refresh_device_label(self) -> None:
        device = self.training_panel.device_combo.currentData()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
        precision = self.training_panel.precision_combo.currentData()
        amp = device.startswith("cuda") and precision != "off"
        self.device_label.setText(f"Device: {name}")
        self.precision_label.setText(f"Mixed precision: {'on' if amp else 'off'}")

    def _show_strategy_guide(self) -> None:
        QMessageBox.information(self, "Which strategy?", (
            "Very little data (< 500 images): Feature extraction — avoids over-fitting.\n\n"
            "Little data (500–5,000): Feature extraction, then Gradual unfreezing.\n\n"
            "Moderate data (> 5,000): Fine-tune, best with Discriminative LRs.\n\n"
            "Domain far from ImageNet (X-rays, satellites): fine-tune from the early layers.\n\n"
            "ResNet-50 is the balanced default; EfficientNet-B0 when light; ConvNeXt for the best accuracy."))

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and Path(urls[0].toLocalFile()).is_dir():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.open_folder(event.mimeData().urls()[0].toLocalFile())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.controller.is_running:
            if self.confirm_close:
                answer = QMessageBox.question(self, "Training in progress",
                                              "Stop training and quit? The best checkpoint so far is kept.")
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
            self.controller.stop_and_wait()
        self.tasks.shutdown()
        self.settings.setValue("window/geometry", self.saveGeometry())
        event.accept()


def window_with_private_settings(folder: Path) -> MainWindow:
    """A window whose settings and run folders live in `folder`, never in the person's own
    (tests, benchmarks, the screenshot script)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("paths/runs", str(folder / "runs"))
    return MainWindow(settings=settings, confirm_close=False)


def run_gui(data: str | None = None, project: str | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Transfer Studio")
    app.setOrganizationName("TransferStudio")
    icon = RESOURCES / "icon.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    style = RESOURCES / "style.qss"
    if style.exists():
        app.setStyleSheet(style.read_text())
    window = MainWindow()
    if project:
        window.open_project(project)
    elif data:
        window.open_folder(str(Path(data).expanduser().resolve()))
    else:
        window.open_demo_dataset()
    window.show()
    return app.exec()
