"""The model panel: architecture, weights, strategy presets, the layer tree and its summary line."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QSpinBox, QVBoxLayout)

from engine.models import FEATURED_ARCHS, available_archs
from widgets.layer_tree import LayerTreeModel, LayerTreeView

WEIGHT_CHOICES = (("ImageNet", "imagenet"), ("None (random init)", "none"))
FROM_FILE = "From file…"
ARCH_TIPS = {
    "resnet50": "The balanced default.",
    "efficientnet_b0": "Light and accurate.",
    "mobilenet_v3_small": "The lightest; fast on CPU.",
    "convnext_tiny": "Modern and accurate.",
}


class ModelPanel(QGroupBox):
    arch_changed = Signal(str)
    weights_changed = Signal(str)
    preset_requested = Signal(str)  # a strategy name

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.arch_combo = QComboBox()
        self.arch_combo.setObjectName("modelCombo")
        self.arch_combo.setToolTip("The pretrained torchvision architecture to fine-tune.")
        featured = list(FEATURED_ARCHS)
        for arch in featured:
            self.arch_combo.addItem(arch, arch)
        self.arch_combo.insertSeparator(len(featured))
        for arch in available_archs():
            if arch not in featured:
                self.arch_combo.addItem(arch, arch)
        self.arch_combo.currentIndexChanged.connect(lambda: self.arch_changed.emit(self.arch()))

        self.weights_combo = QComboBox()
        self.weights_combo.setObjectName("weightsCombo")
        self.weights_combo.setToolTip("Start from ImageNet weights (cached by torchvision), random init, or a state-dict file.")
        for text, value in WEIGHT_CHOICES:
            self.weights_combo.addItem(text, value)
        self.weights_combo.addItem(FROM_FILE, "")
        self.weights_combo.activated.connect(self._weights_activated)

        top = QHBoxLayout()
        top.addWidget(QLabel("Architecture"))
        top.addWidget(self.arch_combo, 1)
        top.addWidget(QLabel("Weights"))
        top.addWidget(self.weights_combo, 1)

        self.factor_spin = QDoubleSpinBox()
        self.factor_spin.setObjectName("discriminativeFactorSpin")
        self.factor_spin.setRange(1.0, 100.0)
        self.factor_spin.setDecimals(1)
        self.factor_spin.setValue(2.6)
        self.factor_spin.setPrefix("÷")
        self.factor_spin.setToolTip("Discriminative LRs: each stage below the head trains at the LR above it divided by this.")
        self.every_spin = QSpinBox()
        self.every_spin.setObjectName("gradualEverySpin")
        self.every_spin.setRange(1, 100)
        self.every_spin.setValue(1)
        self.every_spin.setSuffix(" ep")
        self.every_spin.setToolTip("Gradual unfreezing: one more stage starts training every this many epochs.")
        presets = QHBoxLayout()
        presets.addWidget(QLabel("Presets"))
        buttons = (
            ("presetFeatureExtraction", "Feature extraction", "feature-extraction",
             "Freeze everything but the new head (best below ~500 images). Ctrl+1"),
            ("presetFineTune", "Fine-tune all", "fine-tune", "Train every layer at the base LR (for > 5,000 images). Ctrl+2"),
            ("presetDiscriminative", "Discriminative", "discriminative",
             "Train everything; LRs shrink stage by stage toward the input. Ctrl+3"),
            ("presetGradual", "Gradual", "gradual",
             "Start with the head; unfreeze one stage at a time from the top (500–5,000 images). Ctrl+4"),
        )
        self.preset_buttons = {}
        for object_name, text, strategy, tip in buttons:
            button = QPushButton(text)
            button.setObjectName(object_name)
            button.setToolTip(tip)
            button.setShortcut(f"Ctrl+{len(self.preset_buttons) + 1}")
            button.clicked.connect(lambda _=False, s=strategy: self.preset_requested.emit(s))
            self.preset_buttons[strategy] = button
            presets.addWidget(button)
            if strategy == "discriminative":
                presets.addWidget(self.factor_spin)
            if strategy == "gradual":
                presets.addWidget(self.every_spin)
        presets.addStretch(1)

        self.tree_model = LayerTreeModel(self)
        self.tree = LayerTreeView()
        self.tree.setModel(self.tree_model)
        self.summary_label = QLabel("No model")
        self.summary_label.setObjectName("trainableSummaryLabel")
        self.summary_label.setToolTip("What will train: trainable parameters of all, and how many learning-rate groups.")
        self.summary_label.setStyleSheet("font-weight: 600;")
        self.tree_model.plan_changed.connect(lambda: self.summary_label.setText(self.tree_model.summary()))

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(presets)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.summary_label)
        self._last_weights_index = 0

    def arch(self) -> str:
        return self.arch_combo.currentData()

    def set_arch(self, arch: str) -> None:
        index = self.arch_combo.findData(arch)
        if index >= 0:
            self.arch_combo.setCurrentIndex(index)

    def weights(self) -> str:
        return self.weights_combo.currentData()

    def set_weights(self, weights: str) -> None:
        index = self.weights_combo.findData(weights)
        if index < 0:
            self.weights_combo.insertItem(self.weights_combo.count() - 1, f"File: {weights}", weights)
            index = self.weights_combo.findData(weights)
        self.weights_combo.setCurrentIndex(index)
        self._last_weights_index = index

    def _weights_activated(self, index: int) -> None:
        if self.weights_combo.itemText(index) == FROM_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Weights file", "", "State dicts (*.pt *.pth *.safetensors)")
            if not path:
                self.weights_combo.setCurrentIndex(self._last_weights_index)
                return
            self.set_weights(path)
        self._last_weights_index = self.weights_combo.currentIndex()
        self.weights_changed.emit(self.weights())
