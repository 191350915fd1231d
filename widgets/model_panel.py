"""The model panel: architecture, weights, strategy presets, the layer tree and its summary line.

It shows what it is given (a ModelConfig, a ModelInfo, a PlanConfig, training evidence) and
reports what the person edits through its signals; the tree's own edits come out as a whole
PlanConfig in `plan_edited`. A past run's plan can be previewed in the tree, read-only, under a
banner; meanwhile what the session says is kept, and shown again when the preview ends.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSignalBlocker, QStringListModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QCompleter, QDoubleSpinBox, QFileDialog, QGridLayout,
                               QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QStackedWidget,
                               QStyle, QVBoxLayout)

from engine.config import ModelConfig, PlanConfig
from engine.errors import UserError
from engine.events import IntegrityReport, LayerStats, NormChoice
from engine.model.architectures import FEATURED_ARCHS, ModelInfo, available_archs
from widgets.layer_tree import FROZEN, LR, LayerFilterEdit, LayerTreeModel, LayerTreeView

WEIGHT_CHOICES = (("ImageNet", "imagenet"), ("None (random init)", "none"))
FROM_FILE = "From file…"
WEIGHTS_TIP = "Start from ImageNet weights (cached by torchvision), random init, or a state-dict file."
PRESETS = (
    ("presetFeatureExtraction", "Feature extraction", "feature-extraction",
     "Freeze everything but the new head (best below ~500 images). Ctrl+1"),
    ("presetFineTune", "Fine-tune all", "fine-tune", "Train every layer at the base LR (for > 5,000 images). Ctrl+2"),
    ("presetDiscriminative", "Discriminative", "discriminative",
     "Train everything; LRs shrink stage by stage toward the input. Ctrl+3"),
    ("presetGradual", "Gradual", "gradual",
     "Start with the head; unfreeze one stage at a time from the top (500–5,000 images). Ctrl+4"),
    ("presetLayerDecay", "Layer decay", "layer-decay",
     "Train everything; each stage group below the head trains at the LR above it times this decay "
     "(as timm's layer decay, written as absolute LRs). Ctrl+5"),
)


class _TreeEditBlocker(QObject):
    """Swallows what would edit the tree (Frozen clicks, LR edits, Space on a checkbox, the
    context menu) while still letting the person scroll, expand and read tooltips."""

    BLOCKED_KEYS = (Qt.Key.Key_Space, Qt.Key.Key_Select, Qt.Key.Key_F2, Qt.Key.Key_Return, Qt.Key.Key_Enter)
    MOUSE = (QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease, QEvent.Type.MouseButtonDblClick)

    def __init__(self, view: LayerTreeView):
        super().__init__(view)
        self.view = view
        self.active = False
        view.installEventFilter(self)
        view.viewport().installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt override
        if not self.active:
            return False
        if event.type() == QEvent.Type.ContextMenu:
            return True
        if event.type() == QEvent.Type.KeyPress and event.key() in self.BLOCKED_KEYS:
            return True
        if watched is self.view.viewport() and event.type() in self.MOUSE:
            return self.view.indexAt(event.position().toPoint()).column() in (FROZEN, LR)
        return False


class ModelPanel(QGroupBox):
    arch_edited = Signal(str)
    weights_edited = Signal(str)  # "imagenet", "none" or a file path
    preset_requested = Signal(str)  # a strategy name
    discriminative_factor_edited = Signal(float)
    layer_decay_edited = Signal(float)
    gradual_every_edited = Signal(int)
    plan_edited = Signal(object)  # the PlanConfig after an edit made in the tree

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.arch_combo = QComboBox()
        self.arch_combo.setObjectName("modelCombo")
        self.arch_combo.setToolTip("The pretrained architecture to fine-tune: torchvision's (resnet18) or timm's "
                                   "(timm:NAME). The box beside it searches both.")
        featured = list(FEATURED_ARCHS)
        for arch in featured:
            self.arch_combo.addItem(arch, arch)
        self.arch_combo.insertSeparator(len(featured))
        for arch in available_archs():
            if arch not in featured:
                self.arch_combo.addItem(arch, arch)
        self.arch_combo.currentIndexChanged.connect(lambda: self.arch_edited.emit(self.arch_combo.currentData()))
        self.arch_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.arch_combo.setMinimumContentsLength(7)  # a narrow window elides long names, not the panel
        self.model_search = self._model_search_edit()

        self.weights_combo = QComboBox()
        self.weights_combo.setObjectName("weightsCombo")
        self.weights_combo.setToolTip(WEIGHTS_TIP)
        self.weights_combo.activated.connect(self._weights_activated)
        self.weights_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.weights_combo.setMinimumContentsLength(7)  # file names can be long
        self._weights = "imagenet"
        self._fill_weights_combo([])

        top = QHBoxLayout()
        top.addWidget(QLabel("Architecture"))
        top.addWidget(self.arch_combo, 1)
        top.addWidget(self.model_search, 1)
        top.addWidget(QLabel("Weights"))
        top.addWidget(self.weights_combo, 1)

        self.factor_spin = QDoubleSpinBox()
        self.factor_spin.setObjectName("discriminativeFactorSpin")
        self.factor_spin.setRange(1.0, 100.0)
        self.factor_spin.setDecimals(1)
        self.factor_spin.setValue(PlanConfig().discriminative_factor)
        self.factor_spin.setPrefix("÷")
        self.factor_spin.setToolTip("Discriminative LRs: each stage below the head trains at the LR above it divided by this.")
        self.factor_spin.valueChanged.connect(self.discriminative_factor_edited)
        self.decay_spin = QDoubleSpinBox()
        self.decay_spin.setObjectName("layerDecaySpin")
        self.decay_spin.setRange(0.05, 1.0)
        self.decay_spin.setDecimals(2)
        self.decay_spin.setSingleStep(0.05)
        self.decay_spin.setValue(PlanConfig().layer_decay)
        self.decay_spin.setPrefix("×")
        self.decay_spin.setToolTip("Layer decay: the stage group at depth i of L trains at base LR × decay^(L−i).")
        self.decay_spin.valueChanged.connect(self.layer_decay_edited)
        self.every_spin = QSpinBox()
        self.every_spin.setObjectName("gradualEverySpin")
        self.every_spin.setRange(1, 100)
        self.every_spin.setValue(PlanConfig().gradual_every)
        self.every_spin.setSuffix(" ep")
        self.every_spin.setToolTip("Gradual unfreezing: one more stage starts training every this many epochs.")
        self.every_spin.valueChanged.connect(self.gradual_every_edited)
        # Two rows, so the panel fits a narrow window: the LR ramp's factor and the unfreezing
        # interval sit beside the presets they tune.
        presets = QGridLayout()
        self.preset_buttons: dict[str, QPushButton] = {}
        places = {"feature-extraction": (0, 0, 1, 2), "fine-tune": (0, 2, 1, 2),
                  "discriminative": (1, 0, 1, 1), "gradual": (1, 2, 1, 1), "layer-decay": (2, 0, 1, 1)}
        for object_name, text, strategy, tip in PRESETS:
            button = QPushButton(text)
            button.setObjectName(object_name)
            button.setToolTip(tip)
            button.setShortcut(f"Ctrl+{len(self.preset_buttons) + 1}")
            button.clicked.connect(lambda _=False, s=strategy: self.preset_requested.emit(s))
            self.preset_buttons[strategy] = button
            presets.addWidget(button, *places[strategy])
        presets.addWidget(self.factor_spin, 1, 1)
        presets.addWidget(self.every_spin, 1, 3)
        presets.addWidget(self.decay_spin, 2, 1)
        for column in range(4):
            presets.setColumnStretch(column, 1)

        self.tree_model = LayerTreeModel(self)
        self.tree = LayerTreeView()
        self.tree.setModel(self.tree_model)
        self.tree_model.plan_changed.connect(self._tree_plan_changed)
        self.tree_model.summary_changed.connect(lambda: self.summary_label.setText(self.tree_model.summary()))
        self._edit_blocker = _TreeEditBlocker(self.tree)
        self._edit_triggers = self.tree.editTriggers()
        self.filter_edit = LayerFilterEdit(self.tree)
        self.tree_message = QLabel("")
        self.tree_message.setObjectName("treeMessageLabel")
        self.tree_message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.tree_message.setWordWrap(True)
        self.tree_pages = QStackedWidget()  # the tree, or why there is none to show
        self.tree_pages.addWidget(self.tree)
        self.tree_pages.addWidget(self.tree_message)

        self.summary_label = QLabel("No model")
        self.summary_label.setObjectName("trainableSummaryLabel")
        self.summary_label.setToolTip("What will train: trainable parameters of all, and how many learning-rate groups.")
        self.summary_label.setStyleSheet("font-weight: 600;")
        self.summary_label.setWordWrap(True)  # a gradual plan's summary is long; the panel must stay narrow
        self.warning_label = QLabel("")
        self.warning_label.setObjectName("modelWarningLabel")
        self.warning_label.setStyleSheet("color: #b26a00;")
        self.warning_label.setWordWrap(True)
        self.warning_label.hide()
        self.preview_banner = QLabel("")
        self.preview_banner.setObjectName("planPreviewBanner")
        self.preview_banner.setStyleSheet("background: #fff4d6; color: #5d4200; padding: 3px;")
        self.preview_banner.setWordWrap(True)
        self.preview_banner.hide()
        # What the session says (the plan to edit), kept while a past run's plan is previewed.
        self._info: ModelInfo | None = None
        self._plan = PlanConfig()
        self._weight_decay = 0.0
        self._read_only = False

        layout = QVBoxLayout(self)
        layout.addWidget(self.preview_banner)
        layout.addLayout(top)
        layout.addLayout(presets)
        layout.addWidget(self.summary_label)  # above the tree: seen however small the window is
        layout.addWidget(self.warning_label)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.tree_pages, 1)
        self._editors = (self.arch_combo, self.model_search, self.weights_combo, self.factor_spin, self.every_spin,
                         self.decay_spin, *self.preset_buttons.values())

    def _model_search_edit(self) -> QLineEdit:
        """A search box over both model sources: typing "convnext" offers torchvision's and timm's.
        It starts with torchvision's names; timm's arrive through `show_model_names`."""
        edit = QLineEdit()
        edit.setObjectName("modelSearch")
        edit.setPlaceholderText("Find a model…")
        edit.setClearButtonEnabled(True)
        edit.setToolTip("Type part of a name to find a model among torchvision's and timm's (timm:NAME); "
                        "Enter or a click picks it. Ctrl+M")
        self.model_names = QStringListModel(available_archs(), self)
        completer = QCompleter(self.model_names, edit)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setMaxVisibleItems(15)
        completer.activated.connect(self.choose_arch)
        edit.setCompleter(completer)
        edit.returnPressed.connect(lambda: self.choose_arch(edit.text().strip()))
        return edit

    def height_for_tree_rows(self, rows: int) -> int:
        """The panel's height when its layer tree shows `rows` rows (and all its columns' header)."""
        tree = self.tree
        row_height = tree.sizeHintForRow(0) if tree.model() and tree.model().rowCount() else tree.fontMetrics().height() + 4
        scroll_bar = tree.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        tree_height = tree.header().sizeHint().height() + rows * row_height + 2 * tree.frameWidth() + scroll_bar
        others = self.sizeHint().height() - self.tree_pages.sizeHint().height()  # presets, summary, filter…
        return others + tree_height

    # --- what the session says ------------------------------------------------------------------

    def show_model(self, model: ModelConfig) -> None:
        with QSignalBlocker(self.arch_combo):
            self.arch_combo.setCurrentIndex(self._arch_index(model.arch))
        self._weights = model.weights
        self._select_weights()

    def show_model_names(self, names: list[str]) -> None:
        """Every model the search box offers (torchvision's and timm's, once timm's are listed)."""
        self.model_names.setStringList(names)

    def choose_arch(self, arch: str) -> None:
        """The person picked `arch` in the search box: it becomes the architecture (a name the
        search does not offer is left in the box to correct)."""
        if arch not in self.model_names.stringList():
            return
        self.arch_combo.setCurrentIndex(self._arch_index(arch))  # emits arch_edited
        QTimer.singleShot(0, self.model_search.clear)  # after the completer has written its choice in

    def focus_model_search(self) -> None:
        self.model_search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.model_search.selectAll()

    def _arch_index(self, arch: str) -> int:
        """The combo's row for `arch`, added below the torchvision list when it is not there (a timm model)."""
        index = self.arch_combo.findData(arch)
        if index < 0:
            self.arch_combo.addItem(arch, arch)
            index = self.arch_combo.count() - 1
        return index

    def show_weights_files(self, files: list[str]) -> None:
        """The weights files on offer: those that loaded, and the one being checked."""
        self._fill_weights_combo(files)

    def show_weights_note(self, note: str) -> None:
        self.weights_combo.setToolTip(note or WEIGHTS_TIP)

    def show_model_building(self, arch: str) -> None:
        self.summary_label.setText(f"Building {arch}…")

    def show_model_failure(self, message: str) -> None:
        """No tree to show: the architecture could not be built (the old tree would mislead)."""
        self.tree_message.setText(message)
        self.tree_pages.setCurrentWidget(self.tree_message)
        self.summary_label.setText("No model")

    def show_model_info(self, info: ModelInfo, plan: PlanConfig, weight_decay: float) -> None:
        self._info, self._plan, self._weight_decay = info, plan, weight_decay
        if self.tree_model.is_preview:
            return  # shown when the preview ends
        self.tree_model.set_model_info(info, plan, weight_decay)
        self.tree_pages.setCurrentWidget(self.tree)

    def show_plan(self, plan: PlanConfig) -> None:
        self._plan = plan
        with QSignalBlocker(self.factor_spin), QSignalBlocker(self.every_spin), QSignalBlocker(self.decay_spin):
            self.decay_spin.setValue(plan.layer_decay)
            self.factor_spin.setValue(plan.discriminative_factor)
            self.every_spin.setValue(plan.gradual_every)
        if self.tree_model.model_info is not None and not self.tree_model.is_preview:
            try:
                self.tree_model.set_plan_config(plan)  # no-op when the tree made this plan itself
            except UserError:  # edits of a model still being built: shown with it (show_model_info)
                pass

    def show_weight_decay(self, weight_decay: float) -> None:
        self._weight_decay = weight_decay
        if not self.tree_model.is_preview:
            self.tree_model.set_weight_decay(weight_decay)

    def show_adapt_norm(self, setting: str) -> None:
        self.tree_model.set_adapt_norm(setting)

    def show_norm_choice(self, choice: NormChoice | None) -> None:
        """What a started run did with its BatchNorm statistics: the summary line says so."""
        self.tree_model.set_norm_choice(choice)

    def show_preview(self, run_name: str, info: ModelInfo, plan: PlanConfig) -> None:
        """A past run's plan in the tree, read-only, until end_preview()."""
        self.tree_model.set_preview(info, plan, self._weight_decay)
        self.tree_pages.setCurrentWidget(self.tree)
        self.rename_preview(run_name)
        self.preview_banner.show()
        self._enable_editors()

    def rename_preview(self, run_name: str) -> None:
        """The previewed run was renamed: the banner names it so."""
        self.preview_banner.setText(f"Plan of run {run_name} (read-only) — Use this configuration to edit")

    def end_preview(self) -> None:
        """Back to the plan to edit, as the session last said it."""
        if not self.tree_model.is_preview:
            return
        self.tree_model.end_preview()
        self.preview_banner.hide()
        if self._info is not None:
            self.tree_model.set_model_info(self._info, self._plan, self._weight_decay)
        self._enable_editors()

    def is_previewing(self) -> bool:
        return self.tree_model.is_preview

    def show_warning(self, text: str) -> None:
        self.warning_label.setText(text)
        self.warning_label.setVisible(bool(text))

    def set_read_only(self, read_only: bool) -> None:
        """While a run trains, the panel shows its model and plan and takes no edits; the tree
        can still be scrolled, opened and searched."""
        self._read_only = read_only
        self._enable_editors()
        self._edit_blocker.active = read_only
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers if read_only else self._edit_triggers)

    def _enable_editors(self) -> None:
        # A previewed plan is not the one the presets and spin boxes would change.
        for widget in self._editors:
            widget.setEnabled(not self._read_only and not self.tree_model.is_preview)

    # --- training evidence on the tree -----------------------------------------------------------------

    def show_integrity(self, report: IntegrityReport | None) -> None:
        self.tree_model.set_integrity(report)

    def show_layer_stats(self, stats: dict[str, LayerStats]) -> None:
        self.tree_model.set_layer_stats(stats)

    def clear_evidence(self) -> None:
        self.tree_model.clear_evidence()

    # --- the person's edits ----------------------------------------------------------------------------

    def _tree_plan_changed(self) -> None:
        self.summary_label.setText(self.tree_model.summary())
        if not self.tree_model.is_preview:  # a previewed run's plan is not an edit
            self.plan_edited.emit(self.tree_model.plan_config)

    def _fill_weights_combo(self, files: list[str]) -> None:
        with QSignalBlocker(self.weights_combo):
            self.weights_combo.clear()
            for text, value in WEIGHT_CHOICES:
                self.weights_combo.addItem(text, value)
            for path in files:
                self.weights_combo.addItem(f"File: {Path(path).name}", path)
                self.weights_combo.setItemData(self.weights_combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
            self.weights_combo.addItem(FROM_FILE, "")
        self._select_weights()

    def _select_weights(self) -> None:
        index = self.weights_combo.findData(self._weights)
        with QSignalBlocker(self.weights_combo):
            self.weights_combo.setCurrentIndex(max(0, index))

    def _weights_activated(self, index: int) -> None:
        choice = self.weights_combo.itemData(index)
        if choice == "":  # From file…
            choice, _ = QFileDialog.getOpenFileName(self, "Weights file", "", "State dicts (*.pt *.pth *.safetensors)")
        if not choice:
            self._select_weights()  # cancelled: the combo shows the weights in use
            return
        self.weights_edited.emit(choice)
