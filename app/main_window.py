"""The main window: layout and signal wiring only.

Data and model panels on the left, training controls and live plots on the right, each side
in splitters with scrolling panels so the window fits a 1024×700 screen. What the window shows
comes from one `Session` (app/session.py) and its controllers, one per job: panels hand them the
person's edits and show what their signals say; training events come from the runs controller's
TrainingController as the engine's own frozen dataclasses. The window owns only what is its own:
the layout, the menus, its dialogs and its settings (geometry, recent projects, last folders).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PySide6.QtCore import QSettings, QSize, Qt, QTimer, QUrl, Slot
from PySide6.QtGui import QAction, QDesktopServices, QIcon, QKeySequence
from PySide6.QtWidgets import (QAbstractSpinBox, QApplication, QFileDialog, QFrame, QLabel, QLineEdit, QMainWindow,
                               QMessageBox, QPlainTextEdit, QScrollArea, QSplitter, QStyle, QTabWidget, QTextEdit,
                               QVBoxLayout, QWidget)

from app.gc_guard import GuiThreadCollector
from app.session import Session
from app.session_devices import available_devices, device_status, precision_line
from app.session_state import RunState
from widgets.data_panel import DataPanel, is_dataset_path
from widgets.export_dialog import ExportDialog
from widgets.insight import InsightView
from widgets.lr_finder_dialog import LrFinderDialog
from widgets.model_panel import ModelPanel
from widgets.plots import TrainingPlots
from widgets.runs_view import RunsView
from widgets.search_dialog import SearchDialog
from widgets.suspects_view import SuspectsView
from widgets.training_panel import TrainingPanel, result_line

if TYPE_CHECKING:  # the types the slots take; the window calls nothing of the engine
    from app.insight_session import RunInsight
    from app.run_events import RunFailure
    from engine.config import TrainConfig
    from engine.events import BatchEvent, EpochEvent, RunStarted
    from engine.model.architectures import ModelInfo

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
PROJECT_FILTER = "Transfer Studio project (*.tsproj.json *.json)"
MAX_RECENT = 8
DEFAULT_SIZE = (1400, 900)
TREE_ROWS_KEPT = 10  # the layer tree keeps this many rows in view before the data panel gets more room
CURVES_ROOM = 260  # px the curves' tab keeps (its tabs and one plot) before the training panel gets more room


def focused_text_editor() -> QLineEdit | QPlainTextEdit | QTextEdit | None:
    """The text the person is typing in, when the focus is in a text or number box: its own undo
    comes before the plan's (a number box's text is its line edit)."""
    widget = QApplication.focusWidget()
    if isinstance(widget, QAbstractSpinBox):
        widget = widget.findChild(QLineEdit)
    return widget if isinstance(widget, (QLineEdit, QPlainTextEdit, QTextEdit)) else None


class PanelScrollArea(QScrollArea):
    """A panel at its natural size when there is room, scrolled when the window is small.

    QScrollArea's own size hint is capped at 24 lines of text, which would make a splitter give a
    taller panel less room than it needs even when the screen has it."""

    def __init__(self, panel: QWidget):
        super().__init__()
        self.setWidget(panel)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        # Panels fit half of 1024 px; a narrower pane (a dragged splitter) gets a scroll bar, never
        # a panel shifted out of reach.
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = self.widget().sizeHint()
        scroll_bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        return QSize(hint.width() + scroll_bar, hint.height())

    def height_for_width(self) -> int:
        """The panel's height at the width it has (a word-wrapped label's lines included), which
        its size hint, measured at another width, underestimates."""
        panel = self.widget()
        width = self.viewport().width()
        height = panel.heightForWidth(width) if panel.hasHeightForWidth() else -1
        return max(height, panel.minimumSizeHint().height(), 0) if height > 0 else panel.sizeHint().height()


class PanelFit:
    """A scrolled panel at the top of a vertical splitter, as tall as its contents as long as the
    pane below keeps `room_below()` pixels; once the person drags the splitter, it stays put."""

    def __init__(self, splitter: QSplitter, area: PanelScrollArea, room_below: Callable[[], int]):
        self.splitter, self.area, self.room_below = splitter, area, room_below
        self.moved = False
        splitter.splitterMoved.connect(self._remember_moved)  # a person's drag, never setSizes

    def refit(self) -> None:
        if self.moved:
            return
        total = sum(self.splitter.sizes())
        wanted = min(self.area.height_for_width(), max(total - self.room_below(), total // 3))
        self.splitter.setSizes([wanted, total - wanted])

    def _remember_moved(self, *_) -> None:
        self.moved = True


class FillingHolder(QWidget):
    """Holds a panel that should fill its scroll area's height (the curves share it), scrolling
    only below the panel's minimum. A QScrollArea sizes a widget that has a height-for-width (a
    word-wrapped label: the gradual plan's phases) at its preferred height instead, 1,500 px of
    plots where one fits on screen."""

    def __init__(self, panel: QWidget):
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(panel)

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt override
        # QScrollArea asks this of a layout with a height-for-width and takes the larger of it and
        # the viewport: the minimum lets the viewport decide.
        return self.minimumSizeHint().height()


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, confirm_close: bool = True):
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("Transfer Studio")
        self.settings = settings or QSettings()
        self.confirm_close = confirm_close
        self.garbage_collector = GuiThreadCollector(self)  # before any thread of ours runs Python
        self.session = Session(self.runs_root(), self)
        self.data_panel = DataPanel()
        self.model_panel = ModelPanel()
        self.training_panel = TrainingPanel(available_devices())
        self.plots = TrainingPlots()
        self.insight = InsightView()
        self.runs_view = RunsView()
        self.suspects_view = SuspectsView()
        self.export_dialog: ExportDialog | None = None
        self.lr_finder_dialog: LrFinderDialog | None = None
        self.search_dialog = SearchDialog(self)  # one for the window: its trials stay when it is closed
        self._build_layout()
        self._build_menus()
        self._build_status_bar()
        self._connect_edits()
        self._connect_views()
        self._connect_training()
        self._connect_insight()
        self._connect_runs()
        self._connect_mending()
        self._connect_search()
        self._connect_closing()
        self.session.announce()
        self.session.insight.refresh_runs()
        self.setAcceptDrops(True)
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(*DEFAULT_SIZE)

    # --- what tests, benchmarks and scripts ask ----------------------------------------------------

    @property
    def controller(self):
        """The training thread's controller (app.worker.TrainingController)."""
        return self.session.runs.controller

    @property
    def is_ready(self) -> bool:
        """A dataset is split and its model's layer tree is built: Start can run."""
        return self.session.is_ready

    def runs_root(self) -> Path:
        return Path(self.settings.value("paths/runs", str(Path.home() / "TransferStudio" / "runs")))

    # --- construction -----------------------------------------------------------------------------

    def _build_layout(self) -> None:
        left = QSplitter(Qt.Orientation.Vertical)
        left.setObjectName("leftSplitter")
        self._data_area = PanelScrollArea(self.data_panel)
        left.addWidget(self._data_area)
        left.addWidget(self.model_panel)  # its tree scrolls itself; the rest of it is a few rows
        left.setStretchFactor(0, 0)  # the data panel keeps its natural height; the tree takes the rest
        left.setStretchFactor(1, 1)
        right = QSplitter(Qt.Orientation.Vertical)
        right.setObjectName("rightSplitter")
        training_area = PanelScrollArea(self.training_panel)
        right.addWidget(training_area)
        self.right_tabs = QTabWidget()  # the insight and the runs where the curves are: the window still fits 1024×700
        self.right_tabs.setObjectName("rightTabs")
        # Every view fills its tab and scrolls only below its own minimum: the tabs then never take
        # the training panel's room in a small window.
        self._tab_views = (self.plots, self.insight, self.runs_view, self.suspects_view)
        for view, title in zip(self._tab_views, ("Curves", "Insight", "Runs", "Suspects")):
            self.right_tabs.addTab(PanelScrollArea(FillingHolder(view)), title)
        right.addWidget(self.right_tabs)
        right.setStretchFactor(0, 0)
        right.setStretchFactor(1, 1)
        main = QSplitter(Qt.Orientation.Horizontal)
        main.setObjectName("mainSplitter")
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(0, 1)
        main.setStretchFactor(1, 1)
        for splitter in (left, right, main):
            splitter.setChildrenCollapsible(False)
        self.setCentralWidget(main)
        self._main_splitter, self._left_splitter = main, left
        self._halves_set = False
        self._panel_fits = (
            PanelFit(left, self._data_area, lambda: self.model_panel.height_for_tree_rows(TREE_ROWS_KEPT)),
            PanelFit(right, training_area, lambda: CURVES_ROOM))
        self._fit_timer = QTimer(self)  # refits the panels once the splitters have their new sizes
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(0)
        self._fit_timer.timeout.connect(self._fit_panels)

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
        file_menu.addAction(self._action("Open &dataset folder…", self.data_panel.browse, "Ctrl+Shift+O",
                                         "Choose the dataset folder."))
        file_menu.addAction(self._action("Open &labels CSV…", self.data_panel.browse_csv, None,
                                         "Choose a labels CSV: multi-label (path,labels) or regression (path,value)."))
        self.recent_menu = file_menu.addMenu("Recent projects")
        file_menu.addAction(self._action("&Save project…", self._save_project_dialog, QKeySequence.StandardKey.Save,
                                         "Save dataset, model, plan and hyper-parameters as shown to a project file."))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Export checkpoint…", self.export_checkpoint, "Ctrl+E",
                                         "Export the run's best checkpoint to PyTorch, safetensors, TorchScript or ONNX."))
        file_menu.addAction(self._action("Export c&luster job…", self.export_cluster_job, None,
                                         "Save the configuration as a project and write a SLURM job script that "
                                         "trains it on several nodes (srun + torchrun)."))
        file_menu.addAction(self._action("Try an &image…", self.insight.choose_try_image, "Ctrl+I",
                                         "Classify an image with the run's best checkpoint and see where it looked."))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit, "Quit Transfer Studio."))
        edit_menu = self.menuBar().addMenu("&Edit")
        history = self.session.history
        self.undo_action = self._action("&Undo", self._undo, QKeySequence.StandardKey.Undo,
                                        "Undo the last change: of the plan (a preset, an LR, applied advice) or a "
                                        "move of the dataset's images. In a focused text or number box: its own undo.")
        self.redo_action = self._action("&Redo", self._redo, "Ctrl+Shift+Z",
                                        "Redo the change undone. In a focused text or number box: its own redo.")
        for action, word, can, changed, text, text_changed in (
                (self.undo_action, "&Undo", history.canUndo, history.canUndoChanged, history.undoText,
                 history.undoTextChanged),
                (self.redo_action, "&Redo", history.canRedo, history.canRedoChanged, history.redoText,
                 history.redoTextChanged)):
            action.setEnabled(can())
            changed.connect(action.setEnabled)
            self._name_what_it_does(action, word, text())
            text_changed.connect(lambda what, action=action, word=word: self._name_what_it_does(action, word, what))
            edit_menu.addAction(action)
        edit_menu.addSeparator()
        edit_menu.addAction(self._action("Find a &model…", self.model_panel.focus_model_search, "Ctrl+M",
                                         "Search torchvision's and timm's models by name."))
        train_menu = self.menuBar().addMenu("&Train")
        runs = self.session.runs
        train_menu.addAction(self._action("&Start", runs.start, "Ctrl+R", "Start training."))
        train_menu.addAction(self._action("&Pause / resume", runs.toggle_pause, "Ctrl+P", "Pause or resume training."))
        train_menu.addAction(self._action("S&top", runs.stop, "Ctrl+.", "Stop training after this batch."))
        train_menu.addAction(self._action("&Continue training", runs.continue_run, "Ctrl+Shift+R",
                                          "Resume the run shown from its last completed epoch up to the Epochs total."))
        train_menu.addSeparator()
        train_menu.addAction(self._action("Search &hyperparameters…", self.open_search, "Ctrl+Shift+H",
                                          "Search the plan's knobs (Optuna): each trial a training run, off the "
                                          "window's thread; Use best applies the best trial's plan."))
        view_menu = self.menuBar().addMenu("&View")
        for i, (name, key) in enumerate((("&Curves", "Alt+1"), ("&Insight", "Alt+2"), ("&Runs", "Alt+3"),
                                         ("&Suspects", "Alt+4"))):
            view_menu.addAction(self._action(name, lambda _=False, i=i: self.right_tabs.setCurrentIndex(i), key,
                                             f"Show the {name.strip('&').lower()} tab."))
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("Which strategy?", self._show_strategy_guide, "F1",
                                         "When to use feature extraction, fine-tuning or gradual unfreezing."))
        self._refresh_recent_menu()

    @staticmethod
    def _name_what_it_does(action: QAction, word: str, what: str) -> None:
        """Edit ▸ Undo says what it undoes ("Undo Fine-tune preset"), as the history names it."""
        action.setText(f"{word} {what}" if what else word)

    @Slot()
    def _undo(self) -> None:
        editor = focused_text_editor()
        if editor is None:
            self.session.plan.undo()
        else:  # Ctrl+Z in a box being typed in is the box's, even when it has nothing to undo
            editor.undo()

    @Slot()
    def _redo(self) -> None:
        editor = focused_text_editor()
        if editor is None:
            self.session.plan.redo()
        else:
            editor.redo()

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

    # --- wiring: the person's edits -> the session, the session -> the panels -----------------------------

    def _connect_edits(self) -> None:
        s, dp, mp, tp = self.session, self.data_panel, self.model_panel, self.training_panel
        dp.folder_chosen.connect(s.datasets.open_folder)
        dp.demo_requested.connect(s.datasets.open_demo)
        dp.data_edited.connect(s.settings.update_data)
        dp.class_weights_edited.connect(lambda mode: s.settings.update_train({"class_weights": mode}))
        dp.advice_apply_requested.connect(s.advisor.apply)
        mp.arch_edited.connect(s.settings.set_arch)
        mp.weights_edited.connect(s.settings.set_weights)
        mp.preset_requested.connect(s.plan.apply_preset)
        mp.discriminative_factor_edited.connect(s.plan.set_discriminative_factor)
        mp.gradual_every_edited.connect(s.plan.set_gradual_every)
        mp.layer_decay_edited.connect(s.plan.set_layer_decay)
        mp.plan_edited.connect(s.plan.adopt_plan)
        tp.train_edited.connect(s.settings.update_train)
        tp.base_lr_edited.connect(s.plan.set_base_lr)
        tp.start_clicked.connect(s.runs.start)
        tp.pause_clicked.connect(s.runs.set_paused)
        tp.stop_clicked.connect(s.runs.stop)
        tp.export_clicked.connect(self.export_checkpoint)
        tp.lr_finder_clicked.connect(self.open_lr_finder)

    def _connect_views(self) -> None:
        s, dp, mp, tp = self.session, self.data_panel, self.model_panel, self.training_panel
        configuration, settings, advisor = s.configuration, s.settings, s.advisor
        configuration.data_changed.connect(dp.show_data)
        configuration.model_changed.connect(mp.show_model)
        configuration.plan_changed.connect(self._show_plan)
        configuration.train_changed.connect(self._show_train)
        s.datasets.changed.connect(self._show_dataset)
        s.datasets.thumbnails_ready.connect(dp.show_thumbnails)
        settings.image_size_rule_changed.connect(dp.set_image_size_rule)
        settings.image_size_problem_changed.connect(dp.show_image_size_problem)
        settings.weights_files_changed.connect(mp.show_weights_files)
        settings.model_names_changed.connect(mp.show_model_names)
        settings.weights_note_changed.connect(self._show_weights_note)
        settings.model_info_changed.connect(self._show_model_info)
        settings.model_failed.connect(mp.show_model_failure)
        settings.model_warning_changed.connect(mp.show_warning)
        advisor.pending.connect(dp.show_advice_pending)
        advisor.ready.connect(dp.show_advice)
        advisor.ready.connect(self._fit_timer.start)  # the advice card's lines need room
        advisor.failed.connect(dp.show_advice_failure)
        advisor.applied_changed.connect(dp.mark_advice_applied)
        advisor.followed.connect(dp.show_advice_note)
        s.previews.schedule_previewed.connect(self.plots.show_planned)
        s.shown_run.changed.connect(self._show_run)
        s.shown_run.renamed.connect(self._show_run_name)
        s.messages.error_raised.connect(tp.show_error)
        s.messages.notice.connect(self._show_notice)
        s.exports.finished.connect(self._on_exported)
        s.exports.failed.connect(self._on_export_failed)

    def _connect_training(self) -> None:
        runs, c, mp, tp = self.session.runs, self.controller, self.model_panel, self.training_panel
        runs.start_asked.connect(lambda: tp.show_error(""))
        runs.start_asked.connect(mp.end_preview)  # the tree shows what trains
        runs.launched.connect(self.plots.clear)
        # A turn of the event loop later: a launch's work in one piece held the window 50-100 ms.
        runs.launched.connect(mp.clear_evidence, Qt.ConnectionType.QueuedConnection)
        runs.launched.connect(tp.reset_progress, Qt.ConnectionType.QueuedConnection)
        runs.stopping.connect(tp.show_stopping)
        # the training thread's events (queued to this thread by the controller)
        c.run_started.connect(self._on_run_started)
        c.status_changed.connect(tp.show_status)
        c.batch_finished.connect(self._on_batch)
        c.epoch_finished.connect(self._on_epoch)
        c.paused_changed.connect(tp.show_paused)
        c.run_failed.connect(self._on_run_failed)

    def _connect_insight(self) -> None:
        ins, view = self.session.insight, self.insight
        view.thumbnails_wanted.connect(ins.want_thumbnails)
        view.explain_requested.connect(ins.explain)
        view.explain_label_requested.connect(ins.explain)
        view.image_wanted.connect(ins.show_image)
        view.try_image_requested.connect(view.show_try_busy)
        view.try_image_requested.connect(ins.try_image)
        view.try_model_chosen.connect(ins.set_try_model)
        view.try_model_chosen.connect(self._show_try_model)
        ins.insight_ready.connect(self._show_insight)
        ins.insight_missing.connect(view.show_missing)
        ins.insight_missing.connect(self._show_try_model)  # the model shown for Try follows the shown run
        ins.thumbnails_ready.connect(view.add_thumbnails)
        ins.preview_ready.connect(view.show_preview)
        ins.prediction_ready.connect(view.show_prediction)
        ins.task_prediction_ready.connect(view.show_task_prediction)
        ins.prediction_failed.connect(view.show_try_error)
        ins.failed.connect(self._show_notice)

    def _connect_runs(self) -> None:
        ins, run_list, view = self.session.insight, self.session.run_list, self.runs_view
        ins.runs_listed.connect(view.show_runs)
        ins.comparison_ready.connect(view.show_comparison)
        view.selection_changed.connect(run_list.select)
        view.continue_requested.connect(run_list.continue_run_of)
        view.export_requested.connect(run_list.export_run_of)
        view.open_folder_requested.connect(lambda path: QDesktopServices.openUrl(QUrl.fromLocalFile(path)))
        view.use_configuration_requested.connect(run_list.use_configuration_of)
        view.delete_requested.connect(run_list.delete)
        view.rename_requested.connect(run_list.rename)
        run_list.renamed.connect(view.show_renamed)
        run_list.preview_renamed.connect(self.model_panel.rename_preview)
        run_list.insight_renamed.connect(self.insight.show_title)
        run_list.preview_ended.connect(self.model_panel.end_preview)
        run_list.plan_previewed.connect(self.model_panel.show_preview)
        run_list.history_ready.connect(self.plots.show_history)
        run_list.export_wanted.connect(self.export_checkpoint)
        run_list.deletion_unconfirmed.connect(self._confirm_deletion)

    def _connect_closing(self) -> None:
        closing = self.session.closing
        closing.stopping.connect(self._show_stopping_to_close)
        closing.ready.connect(self.close)

    @Slot()
    def _show_stopping_to_close(self) -> None:
        """The window stays painted while the run stops (every edit is refused while it runs)."""
        self.training_panel.show_stopping()
        self.statusBar().showMessage("Stopping the run…")

    def _connect_mending(self) -> None:
        mending, finder, suspects = self.session.mending, self.session.mending.suspect_finder, self.suspects_view
        for view in (self.insight, suspects):
            view.move_requested.connect(mending.relabel_images)
            view.exclude_requested.connect(mending.exclude_images)
            mending.files_moved.connect(view.apply_moves)
        suspects.find_requested.connect(mending.find_suspects)
        suspects.stop_requested.connect(finder.stop)
        suspects.thumbnails_wanted.connect(finder.want_thumbnails)
        mending.search_started.connect(suspects.show_busy)
        mending.search_refused.connect(suspects.show_failure)
        finder.found.connect(suspects.show_report)
        finder.failed.connect(suspects.show_failure)
        finder.thumbnails_ready.connect(suspects.add_thumbnails)

    def _connect_search(self) -> None:
        search, dialog = self.session.search, self.search_dialog
        dialog.start_requested.connect(search.start)
        dialog.stop_requested.connect(search.stop)
        dialog.head_only_toggled.connect(search.set_head_only)
        dialog.use_best_requested.connect(search.use_best)
        search.context_changed.connect(dialog.show_context)
        search.space_offered.connect(dialog.show_space)
        search.running_changed.connect(dialog.show_running)
        search.trials_changed.connect(dialog.show_trials)
        search.status_changed.connect(dialog.show_status)
        search.failed.connect(dialog.show_error)
        search.best_applied.connect(dialog.accept)  # the window shows the plan applied, Ctrl+Z at hand

    # --- showing the session's state -------------------------------------------------------------------

    @Slot(object)
    def _show_dataset(self, state) -> None:
        if state.listing is not None:  # where "Move to class" can move images
            names = list(state.listing.class_names)
            self.insight.set_class_names(names)
            self.suspects_view.set_class_names(names)
        if state.error:
            self.data_panel.show_error(state.error)
        elif state.summary is not None:
            self.data_panel.show_summary(state.summary)
            self._fit_panels()
        elif state.listing_in_progress:
            self.data_panel.show_listing_in_progress(state.folder)

    @Slot(object)
    def _show_model_info(self, info: ModelInfo | None) -> None:
        if info is None:
            self.model_panel.show_model_building(self.session.config().model.arch)
            return
        config = self.session.config()
        self.model_panel.show_model_info(info, config.plan, config.train.weight_decay)

    @Slot(object)
    def _show_plan(self, plan) -> None:
        self.model_panel.show_plan(plan)
        self.training_panel.show_base_lr(plan.base_lr)

    @Slot(object)
    def _show_train(self, train: TrainConfig) -> None:
        self.training_panel.show_train(train)
        self.data_panel.show_class_weights(train.class_weights)
        self.model_panel.show_weight_decay(train.weight_decay)
        self.model_panel.show_adapt_norm(train.adapt_norm)
        device, precision = device_status(train.device, train.precision, train.processes)
        self.device_label.setText(device)
        self.precision_label.setText(precision)

    @Slot(str)
    def _show_weights_note(self, note: str) -> None:
        self.model_panel.show_weights_note(note)
        self.statusBar().showMessage(note, 15000)

    @Slot(str)
    def _show_notice(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)

    @Slot(object)
    def _show_run(self, run: RunState) -> None:
        self.data_panel.set_read_only(run.running)
        self.model_panel.set_read_only(run.running)
        self.training_panel.set_run_controls(run.running, run.can_export)
        self._show_run_name(run)
        if run.running:
            return
        if run.result is not None:
            self.training_panel.show_finished(result_line(run.result))
        elif run.failure is not None:
            self.training_panel.show_finished("Failed")
            self.training_panel.show_error(run.failure.message)
        elif run == RunState():  # the last run belonged to another dataset or model
            self.plots.clear()
            self.model_panel.clear_evidence()
            self.training_panel.reset_progress("Ready")

    @Slot(object)
    def _show_run_name(self, run: RunState) -> None:
        if run.folder is not None:  # its name; its folder's whole path in the tooltip
            self.run_label.setText(f"{'Run' if run.running else 'Last run'}: {run.shown_name}")
            self.run_label.setToolTip(str(run.folder.path))
        else:
            self.run_label.setText("Starting a run…" if run.running else "No run yet")
            self.run_label.setToolTip("")

    @Slot(object)
    def _on_run_started(self, event: RunStarted) -> None:
        self.device_label.setText(f"Device: {event.device_name}")
        self.precision_label.setText(precision_line(event.precision))
        weighting = [note for note in event.notes if "class weight" in note]  # whether class weights are on
        # The norm statistics' choice when the run said it (a model with BatchNorm): adapted or as loaded, and why.
        norm = [event.norm_choice.line] if event.norm_choice and event.norm_choice.line in event.notes else []
        self.statusBar().showMessage(" · ".join([event.feature_cache, *weighting, *norm]))  # stays: cached or not
        self.model_panel.show_norm_choice(event.norm_choice)

    @Slot(object)
    def _on_batch(self, event: BatchEvent) -> None:
        self.plots.add_batch(event)
        self.training_panel.show_batch(event)
        if event.layers:
            self.model_panel.show_layer_stats(event.layers)

    @Slot(object)
    def _on_epoch(self, event: EpochEvent) -> None:
        self.plots.add_epoch(event)
        self.training_panel.show_epoch(event)
        if event.layers:
            self.model_panel.show_layer_stats(event.layers)
        if event.integrity is not None:
            self.model_panel.show_integrity(event.integrity)

    @Slot(object)
    def _on_run_failed(self, failure: RunFailure) -> None:
        box = QMessageBox(QMessageBox.Icon.Critical, "Training failed", failure.message, parent=self)
        box.setObjectName("trainingFailedBox")
        box.open()  # window-modal but not blocking: the event loop keeps running

    @Slot(object)
    def _show_insight(self, insight: RunInsight) -> None:
        if insight.task != "single-label":
            self.insight.show_task_evaluation(insight.evaluation, insight.dataset_root, insight.name)
        else:
            self.insight.show_evaluation(insight.evaluation, insight.dataset_root, insight.name, insight.norm_line)
            self.insight.show_embeddings(insight.points)
            self.insight.show_calibration(insight.calibration, insight.calibration_note)
        self._show_try_model()

    @Slot()
    def _show_try_model(self) -> None:
        path = self.session.insight.try_model_path()
        self.insight.show_try_model("none yet: train a run or choose a file" if path is None
                                    else f"{path.parent.name}/{path.name}")

    @Slot(str, str)
    def _confirm_deletion(self, path: str, name: str) -> None:
        folder = Path(path).name
        named = name if name == folder else f"{name} (folder {folder})"
        answer = QMessageBox.question(self, "Delete run", f"There is no trash here. Delete {named} "
                                      f"and all its files for good?")
        if answer == QMessageBox.StandardButton.Yes:
            self.session.run_list.delete_for_good(path)

    # --- dataset (kept for the command line, tests and scripts) -----------------------------------------

    def open_folder(self, folder: str) -> None:
        self.settings.setValue("paths/last_dataset", folder)
        self.session.datasets.open_folder(folder)

    def open_startup(self, data: str | None = None, project: str | None = None) -> None:
        """What a fresh window opens: a project, a folder, else the last run (so Continue and
        Export work after a restart), else the demo dataset."""
        if project:
            self.open_project(project)
        elif data:
            self.open_folder(str(Path(data).expanduser().resolve()))
        elif not self.session.runs.restore_latest_run():
            self.session.datasets.open_demo()

    # --- guidance -----------------------------------------------------------------------------------------

    @Slot()
    def open_lr_finder(self) -> None:
        """The LR range test on the configuration shown; Apply scales the plan (undoably)."""
        if self.session.is_running:
            return
        tasks, config = self.session.tasks, self.session.config()
        self.lr_finder_dialog = LrFinderDialog(config, self.session.datasets.scan_for(config),
                                               submit=lambda fn, done, error: tasks.submit("lr-find", fn, done, error),
                                               parent=self)
        self.lr_finder_dialog.applied.connect(self.session.plan.adopt_scaled_plan)
        self.lr_finder_dialog.open()

    @Slot()
    def open_search(self) -> None:
        """Train ▸ Search hyperparameters…: the dialog, its space offered for the configuration shown."""
        self.session.search.offer()
        self.search_dialog.open()

    # --- export -------------------------------------------------------------------------------------------

    @Slot()
    def export_checkpoint(self) -> None:
        """Open the Export dialog for the shown run's best checkpoint."""
        offer = self.session.exports.offer()
        if offer is None:
            return
        checkpoint, meta = offer
        folder = str(self.settings.value("paths/last_export", ""))
        if not folder or not Path(folder).is_dir():
            folder = str(checkpoint.parent)
        self.export_dialog = ExportDialog(str(checkpoint), meta, folder, self)
        self.export_dialog.export_requested.connect(self.session.exports.start)
        self.export_dialog.open()

    @Slot()
    def export_cluster_job(self) -> None:
        """File > Export cluster job…: the dialog saves the shown configuration as a project, then its script."""
        from widgets.cluster_dialog import ClusterDialog

        folder = Path(self.settings.value("paths/last_project_dir", str(Path.home())))
        ClusterDialog(str(folder / "cluster-job.tsproj.json"), self.save_project, self.session.config,
                      self).open()  # deletes itself on close

    @Slot(str, list)
    def _on_exported(self, folder: str, reports: list) -> None:
        self.settings.setValue("paths/last_export", folder)  # only a folder that worked becomes the default
        kept = [r for r in reports if r.get("passed") is not False]  # an int8 file refused on accuracy was not kept
        refused = "; int8 refused: it lost too much accuracy" if len(kept) < len(reports) else ""
        self.statusBar().showMessage(f"Exported {len(kept)} file(s) to {folder}, all passed the parity check{refused}",
                                     10000)
        if self.export_dialog is not None:
            self.export_dialog.show_reports(reports)

    @Slot(str)
    def _on_export_failed(self, message: str) -> None:
        if self.export_dialog is not None and self.export_dialog.isVisible():
            self.export_dialog.show_error(message)
        else:
            self.training_panel.show_error(message)

    # --- projects ------------------------------------------------------------------------------------------

    def save_project(self, path: str) -> None:
        """Saves the configuration as shown (during a run: the run's)."""
        self.session.save_project(path)
        self._remember_recent(path)
        self.statusBar().showMessage(f"Saved {path}", 5000)

    def open_project(self, path: str) -> None:
        self.session.open_project(path, lambda: self._show_project_opened(path))

    def _show_project_opened(self, path: str) -> None:
        self._remember_recent(path)
        self.setWindowTitle(f"Transfer Studio — {Path(path).name}")

    @Slot()
    def new_project(self) -> None:
        if self.session.settings.reset():
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

    def _show_strategy_guide(self) -> None:
        QMessageBox.information(self, "Which strategy?", (
            "Very little data (< 500 images): Feature extraction — avoids over-fitting.\n\n"
            "Little data (500–5,000): Feature extraction, then Gradual unfreezing.\n\n"
            "Moderate data (> 5,000): Fine-tune, best with Discriminative LRs.\n\n"
            "Domain far from ImageNet (X-rays, satellites): fine-tune from the early layers.\n\n"
            "ResNet-50 is the balanced default; EfficientNet-B0 when light; ConvNeXt for the best accuracy."))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._halves_set:  # half and half at first, whatever the panels' preferred widths
            self._halves_set = True
            width = self._main_splitter.width()
            self._main_splitter.setSizes([width // 2, width - width // 2])
            self._fit_panels()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit_timer.start()  # after the splitters took the new size

    def show_view(self, view: QWidget) -> None:
        """Bring the tab that holds `view` (the curves, the insight, the runs, the suspects) to the front."""
        self.right_tabs.setCurrentIndex(self._tab_views.index(view))

    def _fit_panels(self) -> None:
        """The data and training panels as tall as their contents (the advice card's lines too), as
        long as the layer tree and the curves keep their room; a panel scrolls in a small window."""
        if self._halves_set:
            for fit in self._panel_fits:
                fit.refit()

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and is_dataset_path(urls[0].toLocalFile()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.open_folder(event.mimeData().urls()[0].toLocalFile())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        closing = self.session.closing
        if self.session.is_running and self.confirm_close and not closing.in_progress:
            answer = QMessageBox.question(self, "Training in progress",
                                          "Stop training and quit? The best checkpoint so far is kept.")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        if self.session.search.running:  # it stops at its next batch; the window closes once its thread ended
            self.session.search.stop()
            self.session.search.ended.connect(self.close, Qt.ConnectionType.SingleShotConnection)
            event.ignore()
            return
        if not closing.may_close():  # the run is stopping; closing.ready closes the window again
            event.ignore()
            return
        self.session.shutdown()
        self.garbage_collector.stop()
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
    window.open_startup(data, project)
    window.show()
    return app.exec()
