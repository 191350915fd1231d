"""The layer tree: every module with a Frozen checkbox and a learning-rate cell.

`LayerTreeModel` is a QAbstractItemModel over plain engine data: the model's `ModelInfo` (names,
types, parameter counts) and a `PlanConfig` (strategy + the person's edits). Every checkbox or LR
edit appends a `PlanEdit`; the engine's `build_plan`/`describe_plan` then say what is frozen and
at what LR each module trains, so the tree shows exactly what the trainer will do.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QAction, QBrush, QColor, QFont, QValidator
from PySide6.QtWidgets import (QAbstractItemView, QDoubleSpinBox, QHeaderView, QInputDialog, QMenu,
                               QStyledItemDelegate, QTreeView)

from engine.config import PlanConfig, PlanEdit
from engine.errors import UserError
from engine.models import ModelInfo
from engine.plan import build_plan, describe_plan, summary_line

HEADERS = ("Layer", "Type", "Params", "Frozen", "LR")
LAYER, TYPE, PARAMS, FROZEN, LR = range(5)
NAME_ROLE = Qt.ItemDataRole.UserRole + 1
INHERITED = QBrush(QColor(140, 140, 140))


def format_lr(lr: float) -> str:
    return f"{lr:.1e}"


class LayerTreeModel(QAbstractItemModel):
    plan_changed = Signal()  # after any edit or preset: read plan_config / report / summary()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._info: ModelInfo | None = None
        self._config = PlanConfig()
        self._weight_decay = 0.0
        self._report: dict = {}
        self._rows: list[dict] = []  # describe_plan's modules, in info.layers order
        self._children: list[list[int]] = []
        self._parent: list[int] = []
        self._row_in_parent: list[int] = []

    # --- the data behind the tree -------------------------------------------------------------

    def set_model_info(self, info: ModelInfo, config: PlanConfig, weight_decay: float = 0.0) -> None:
        """Show a new model; raises UserError (and changes nothing) when the plan does not fit it."""
        report = describe_plan(info, build_plan(config, info), weight_decay)
        self.beginResetModel()
        self._info, self._config, self._weight_decay = info, config, weight_decay
        self._report, self._rows = report, report["modules"]
        index_of = {layer.name: i for i, layer in enumerate(info.layers)}
        self._children = [[] for _ in info.layers]
        self._parent = [-1] * len(info.layers)
        self._row_in_parent = [0] * len(info.layers)
        for i, layer in enumerate(info.layers):
            if layer.parent is not None:
                p = index_of[layer.parent]
                self._parent[i] = p
                self._row_in_parent[i] = len(self._children[p])
                self._children[p].append(i)
        self.endResetModel()
        self.plan_changed.emit()

    def set_plan_config(self, config: PlanConfig) -> None:
        self._recompute(config)
        self._emit_all_changed()
        self.plan_changed.emit()

    def set_weight_decay(self, weight_decay: float) -> None:
        self._weight_decay = weight_decay
        self.set_plan_config(self._config)

    def apply_edit(self, edit: PlanEdit) -> None:
        self.set_plan_config(self._config.with_edit(edit))

    @property
    def plan_config(self) -> PlanConfig:
        return self._config

    @property
    def model_info(self) -> ModelInfo | None:
        return self._info

    @property
    def report(self) -> dict:
        return self._report

    def summary(self) -> str:
        return summary_line(self._report) if self._report else "No model"

    def module_row(self, name: str) -> dict:
        return next(r for r in self._rows if r["name"] == name)

    def index_for(self, name: str, column: int = 0) -> QModelIndex:
        for i, row in enumerate(self._rows):
            if row["name"] == name:
                return self.createIndex(self._row_in_parent[i], column, i)
        return QModelIndex()

    def _recompute(self, config: PlanConfig) -> None:
        if self._info is None:
            self._config = config
            return
        plan = build_plan(config, self._info)  # raises UserError on a bad edit: state stays as it was
        self._config = config
        self._report = describe_plan(self._info, plan, self._weight_decay)
        self._rows = self._report["modules"]

    def _emit_all_changed(self) -> None:
        if not self._rows:
            return
        self.dataChanged.emit(self.index(0, 0), self.index(0, len(HEADERS) - 1))
        for i, kids in enumerate(self._children):
            if kids:
                parent = self.createIndex(self._row_in_parent[i], 0, i)
                self.dataChanged.emit(self.index(0, 0, parent), self.index(len(kids) - 1, len(HEADERS) - 1, parent))

    # --- QAbstractItemModel -----------------------------------------------------------------------

    def index(self, row: int, column: int, parent=QModelIndex()) -> QModelIndex:
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0)  # the model itself is the one top-level row
        kids = self._children[parent.internalId()]
        return self.createIndex(row, column, kids[row])

    def parent(self, index=QModelIndex()) -> QModelIndex:  # noqa: A003 - Qt's name
        if not index.isValid():
            return QModelIndex()
        p = self._parent[index.internalId()]
        if p < 0:
            return QModelIndex()
        return self.createIndex(self._row_in_parent[p], 0, p)

    def rowCount(self, parent=QModelIndex()) -> int:
        if not self._rows:
            return 0
        if not parent.isValid():
            return 1
        if parent.column() != 0:
            return 0
        return len(self._children[parent.internalId()])

    def columnCount(self, parent=QModelIndex()) -> int:
        return len(HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(HEADERS):
            return HEADERS[section]
        return None

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == FROZEN:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        elif index.column() == LR:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self._rows[index.internalId()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == LAYER:
                return row["name"].rpartition(".")[2] if row["name"] else self._info.arch
            if col == TYPE:
                return row["type"]
            if col == PARAMS:
                return f"{row['params']:,}" if row["params"] else ""
            if col == LR:
                return format_lr(row["lr"])
            return None
        if role == Qt.ItemDataRole.EditRole and col == LR:
            return row["lr"]
        if role == Qt.ItemDataRole.CheckStateRole and col == FROZEN:
            return self._check_state(row)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == LR and (row["lr_inherited"] or self._check_state(row) == Qt.CheckState.Checked):
                return INHERITED
            if col in (LAYER, TYPE, PARAMS) and self._check_state(row) == Qt.CheckState.Checked and row["params"]:
                return INHERITED
        if role == Qt.ItemDataRole.FontRole and col == LR and row["lr_inherited"]:
            font = QFont()
            font.setItalic(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (PARAMS, LR):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(row, col)
        if role == NAME_ROLE:
            return row["name"]
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid():
            return False
        name = self._rows[index.internalId()]["name"]
        try:
            if index.column() == FROZEN and role == Qt.ItemDataRole.CheckStateRole:
                state = Qt.CheckState(value) if not isinstance(value, Qt.CheckState) else value
                self.apply_edit(PlanEdit(name, frozen=state == Qt.CheckState.Checked))
                return True
            if index.column() == LR and role == Qt.ItemDataRole.EditRole:
                if value is None or value == "":
                    self.apply_edit(PlanEdit(name, inherit_lr=True))
                    return True
                lr = float(value)
                if not (lr > 0 and math.isfinite(lr)):
                    return False
                self.apply_edit(PlanEdit(name, lr=lr))
                return True
        except (UserError, ValueError, TypeError):
            return False
        return False

    # --- presentation helpers -------------------------------------------------------------------

    @staticmethod
    def _check_state(row: dict) -> Qt.CheckState:
        if row["params"]:
            if row["trainable_params"] == 0:
                return Qt.CheckState.Checked
            if row["trainable_params"] < row["params"]:
                return Qt.CheckState.PartiallyChecked
            return Qt.CheckState.Unchecked
        return Qt.CheckState.Checked if row["frozen"] else Qt.CheckState.Unchecked

    @staticmethod
    def _tooltip(row: dict, col: int) -> str:
        name = row["name"] or "the whole model"
        if col == FROZEN:
            if row["params"] and 0 < row["trainable_params"] < row["params"]:
                text = f"Partly frozen: {row['trainable_params']:,} of {row['params']:,} parameters train."
            else:
                text = f"{name} is {'frozen' if row['frozen'] else 'trained'}"
                text += " (inherited)." if row["frozen_inherited"] and row["name"] else "."
            if row["is_norm"] and row["frozen"]:
                text += (" Its running statistics update in training." if row["train_norm"]
                         else " Eval mode: running statistics stay exactly as loaded.")
            if row["unfreeze_epoch"] is not None:
                text += f" Gradual unfreezing: trains from epoch {row['unfreeze_epoch'] + 1}."
            return text + " Checking sets the whole subtree."
        if col == LR:
            source = "inherited from a parent" if row["lr_inherited"] else "set here"
            return f"Learning rate {row['lr']:.3g} ({source}). Double-click to edit; the value applies to the subtree."
        if col == PARAMS:
            return f"{row['params']:,} parameters, {row['trainable_params']:,} trainable."
        return name


class ScientificSpinBox(QDoubleSpinBox):
    """Edits learning rates: scientific notation, steps along 1-2-5 per decade."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(1e-9, 10.0)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return format_lr(value)

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        try:
            value = float(text)
        except ValueError:
            return QValidator.State.Intermediate, text, pos
        ok = self.minimum() <= value <= self.maximum()
        return (QValidator.State.Acceptable if ok else QValidator.State.Intermediate), text, pos

    def stepBy(self, steps: int) -> None:
        value = self.value()
        for _ in range(abs(steps)):
            value = _next_125(value, up=steps > 0)
        self.setValue(min(max(value, self.minimum()), self.maximum()))


def _next_125(value: float, up: bool) -> float:
    exponent = math.floor(math.log10(value))
    ladder = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]
    if up:
        return next(v for v in ladder if v > value * (1 + 1e-9))
    return next(v for v in reversed(ladder) if v < value * (1 - 1e-9))


class LrDelegate(QStyledItemDelegate):
    def createEditor(self, parent, option, index):
        editor = ScientificSpinBox(parent)
        editor.setToolTip("Learning rate for this module and everything below it; arrow keys step 1-2-5.")
        return editor

    def setEditorData(self, editor, index):
        editor.setValue(float(index.data(Qt.ItemDataRole.EditRole)))

    def setModelData(self, editor, model, index):
        editor.interpretText()
        model.setData(index, editor.value(), Qt.ItemDataRole.EditRole)


class LayerTreeView(QTreeView):
    """The tree with its LR editor and a context menu for the subtree operations."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("layerTree")
        self.setItemDelegateForColumn(LR, LrDelegate(self))
        self.setAlternatingRowColors(True)
        self.setUniformRowHeights(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed
                             | QAbstractItemView.EditTrigger.SelectedClicked)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._show_menu)
        self.setToolTip("Every module of the model: tick Frozen to stop it training, double-click LR to set its learning rate.")

    def setModel(self, model) -> None:  # noqa: N802 - Qt override
        super().setModel(model)
        header = self.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(LAYER, QHeaderView.ResizeMode.Stretch)
        for col in (TYPE, PARAMS, FROZEN, LR):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        model.modelReset.connect(self._expand_top)

    def _expand_top(self) -> None:
        self.expandToDepth(0)

    def _show_menu(self, pos) -> None:
        index = self.indexAt(pos)
        model = self.model()
        if not index.isValid() or not isinstance(model, LayerTreeModel):
            return
        name = index.siblingAtColumn(0).data(NAME_ROLE)
        row = model.module_row(name)
        menu = QMenu(self)
        actions = [
            ("Freeze subtree", lambda: model.apply_edit(PlanEdit(name, frozen=True))),
            ("Unfreeze subtree", lambda: model.apply_edit(PlanEdit(name, frozen=False))),
            ("Set learning rate…", lambda: self._ask_lr(model, name, row["lr"])),
        ]
        if name and not row["lr_inherited"]:
            actions.append(("Inherit learning rate from parent", lambda: model.apply_edit(PlanEdit(name, inherit_lr=True))))
        actions.append(("Let frozen norm layers update statistics" if not row["train_norm"]
                        else "Keep frozen norm layers' statistics fixed",
                        lambda: model.apply_edit(PlanEdit(name, train_norm=not row["train_norm"]))))
        for text, slot in actions:
            action = QAction(text, menu)
            action.triggered.connect(slot)
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction("Expand all", self.expandAll)
        menu.addAction("Collapse all", self.collapseAll)
        menu.popup(self.viewport().mapToGlobal(pos))

    def _ask_lr(self, model: LayerTreeModel, name: str, current: float) -> None:
        text, ok = QInputDialog.getText(self, "Learning rate", f"LR for {name or 'the whole model'}:", text=format_lr(current))
        if ok:
            try:
                lr = float(text)
            except ValueError:
                return
            if lr > 0:
                model.apply_edit(PlanEdit(name, lr=lr))

