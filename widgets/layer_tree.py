"""The layer tree: every module with a Frozen checkbox, a learning-rate cell and training evidence.

`LayerTreeModel` is a QAbstractItemModel over plain engine data: the model's `ModelInfo` (names,
types, parameter counts) and a `PlanConfig` (strategy + the person's edits). Every checkbox or LR
edit appends a `PlanEdit` (except an LR on the root: that is the base LR, and setting it keeps the
LRs set below); the engine's `build_plan`/`describe_plan` then say what is frozen and at what LR
each module trains, so the tree shows exactly what the trainer will do. During a run it also shows
evidence: the freeze-integrity check on frozen modules and each stage's update ratio.

Big trees (resnet152 has 423 modules) must never stall the window: the model keeps what every cell
shows and, after a change, emits dataChanged only for the cells whose content changed (contiguous
siblings coalesced, never the Layer column); the view sizes its columns once instead of asking
every row on each change, and repaints a changed range's rectangle (or the whole viewport when
one event-loop turn brings more than MANY_CHANGES ranges).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QAccessible, QAction, QBrush, QColor, QFont, QValidator
from PySide6.QtWidgets import (QAbstractItemView, QDoubleSpinBox, QHeaderView, QInputDialog, QLineEdit, QMenu,
                               QStyledItemDelegate, QToolTip, QTreeView)

from engine.config import PlanConfig, PlanEdit
from engine.errors import UserError
from engine.events import IntegrityReport, LayerStats, NormChoice
from engine.model.architectures import ModelInfo
from engine.plan.plan import (build_plan, describe_plan, summary_line, unassigned_parameters, with_base_lr,
                              with_weight_decay)
from widgets.norm_statistics import norm_summary, norm_tooltip

HEADERS = ("Layer", "Type", "Params", "Frozen", "LR", "Update ratio")
LAYER, TYPE, PARAMS, FROZEN, LR, RATIO = range(len(HEADERS))
NAME_ROLE = Qt.ItemDataRole.UserRole + 1
INHERITED = QBrush(QColor(140, 140, 140))
INTACT = QBrush(QColor(30, 130, 60))
ALARM = QBrush(QColor(200, 30, 30))
MIN_LR, MAX_LR = 1e-8, 10.0
LR_RANGE = "between 1e-08 and 10"
MAX_NAMED_TENSORS = 6
LAYER_MIN_CHARACTERS = 14  # the Layer column never gets narrower than this many characters (and 3 indents)
BADGE_TEXT = {"intact": "✓", "changed": "⚠"}
RIGHT_ALIGNED = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
RATIO_EXPLAINED = ("Update ratio ‖Δθ‖/‖θ‖ per optimizer step; around 1e-3 is healthy; far above means the LR is "
                   "too high for this layer; 0 on a trainable layer means it learns nothing.")

# --- learning-rate text ------------------------------------------------------------------------


def format_lr(lr: float) -> str:
    """A cell's text: as few digits as show the value exactly, at most 4 ("1.0e-03", "1.25e-04")."""
    return _scientific(lr, max_digits=4)


def lr_text(lr: float) -> str:
    """An editor's text: what was typed, up to 6 significant digits, so reading it back is exact."""
    return _scientific(lr, max_digits=6)


def _scientific(value: float, max_digits: int) -> str:
    for decimals in range(1, max_digits):
        text = f"{value:.{decimals}e}"
        if float(text) == value:
            return text
    return f"{value:.{max_digits - 1}e}"


def lr_problem(value: float) -> str:
    """Why `value` is not a learning rate the tree accepts; "" when it is."""
    if not math.isfinite(value):
        return f"{value} is not a learning rate: enter a number {LR_RANGE}, e.g. 3e-4."
    if not MIN_LR <= value <= MAX_LR:
        return f"{value:g} is out of range: a learning rate must be {LR_RANGE}, e.g. 3e-4."
    return ""


def parse_lr(text: str) -> float:
    """The learning rate in `text`; raises ValueError saying why it is refused."""
    stripped = text.strip()
    try:
        value = float(stripped)
    except ValueError:
        raise ValueError(f"'{stripped}' is not a number: enter a learning rate {LR_RANGE}, e.g. 3e-4.") from None
    problem = lr_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# --- update-ratio verdicts -------------------------------------------------------------------------

HEALTH = {  # name -> (cell background or None, what it means)
    "frozen": (None, "Frozen: 0 is expected."),
    "waiting": (None, "Frozen until gradual unfreezing reaches it."),
    "moved": (QColor(239, 154, 154), "Frozen, yet its parameters moved: see the Frozen column's integrity check."),
    "dead": (QColor(216, 180, 180), "Trainable, but it learns nothing: no gradient reaches it or no optimizer group holds it."),
    "low": (QColor(200, 222, 245), "Very small: this layer barely moves; its LR may be too low."),
    "healthy": (QColor(190, 232, 190), "Healthy."),
    "high": (QColor(255, 226, 150), "High: watch this layer."),
    "too_high": (QColor(255, 160, 110), "Too high: the LR is probably too high for this layer."),
}


def ratio_health(ratio: float, frozen: bool, scheduled: bool) -> str:
    """A key of HEALTH. `frozen`: every parameter frozen; `scheduled`: gradual unfreezing thaws it later."""
    if ratio == 0:
        if scheduled:
            return "waiting"
        return "frozen" if frozen else "dead"
    if frozen and not scheduled:
        return "moved"
    if ratio < 1e-4:
        return "low"
    if ratio < 3e-3:
        return "healthy"
    return "high" if ratio < 1e-2 else "too_high"


class FilterResult(NamedTuple):
    shown: frozenset[str]  # modules that match, their ancestors and their descendants
    expand: frozenset[str]  # ancestors of the matches, opened so the matches can be seen
    matches: int


PREVIEW_REFUSAL = "A past run's plan is shown read-only: press Use this configuration to edit it."


class LayerTreeModel(QAbstractItemModel):
    plan_changed = Signal()  # after any edit or preset: read plan_config / report / summary()
    summary_changed = Signal()  # summary() changed, the plan did not (the norm statistics' setting or choice)
    base_lr_changed = Signal(float)  # the root's LR, which is the base LR
    edit_refused = Signal(str)  # why an edit was not applied, for the person

    def __init__(self, parent=None):
        super().__init__(parent)
        self._info: ModelInfo | None = None
        self._config = PlanConfig()
        self._weight_decay = 0.0
        self._adapt_norm = "auto"  # --adapt-norm: frozen BatchNorm statistics as loaded, adapted (AdaBN), or measured
        self._norm_choice: NormChoice | None = None  # what the shown run chose, once it has started
        self._report: dict = {}
        self._rows: list[dict] = []  # describe_plan's modules, in info.layers order
        self._index_of: dict[str, int] = {}
        self._children: list[list[int]] = []
        self._parent: list[int] = []
        self._row_in_parent: list[int] = []
        self._unassigned: dict[int, list[str]] = {}  # row -> its parameters that no stage claims
        self._checks: list[Qt.CheckState | None] = []  # None: nothing to freeze, no checkbox
        self._cells: list[tuple] = []  # per row, per column: what the cell shows (diffed after a change)
        self._integrity: IntegrityReport | None = None
        self._changed_under: dict[int, tuple[str, ...]] = {}  # row -> changed frozen tensors it owns
        self._stats: dict[str, LayerStats] = {}
        self._preview = False  # a past run's plan, shown read-only: flags() offers no editing
        self._italic = QFont()
        self._italic.setItalic(True)
        self._role_answers = {
            Qt.ItemDataRole.DisplayRole: self._display, Qt.ItemDataRole.EditRole: self._edit_value,
            Qt.ItemDataRole.CheckStateRole: self._check_value, Qt.ItemDataRole.ForegroundRole: self._foreground,
            Qt.ItemDataRole.BackgroundRole: self._background, Qt.ItemDataRole.FontRole: self._font,
            Qt.ItemDataRole.TextAlignmentRole: self._alignment, Qt.ItemDataRole.ToolTipRole: self._tooltip,
            NAME_ROLE: self._name,
        }

    # --- the data behind the tree -------------------------------------------------------------

    def set_model_info(self, info: ModelInfo, config: PlanConfig, weight_decay: float = 0.0) -> None:
        """Show a new model; raises UserError (and changes nothing) when the plan does not fit it."""
        report = describe_plan(info, build_plan(config, info), weight_decay)
        old_base = self.base_lr()
        self.beginResetModel()
        self._info, self._config, self._weight_decay = info, config, weight_decay
        self._set_structure(info)
        self._clear_evidence_state()
        self._set_report(report)
        self._cells = self._all_cells()
        self.endResetModel()
        self.plan_changed.emit()
        self._announce_base_lr(old_base)

    def set_preview(self, info: ModelInfo, config: PlanConfig, weight_decay: float = 0.0) -> None:
        """Show a past run's plan read-only until end_preview(); raises UserError when it does not fit."""
        was, self._preview = self._preview, True  # already read-only while plan_changed is heard
        try:
            self.set_model_info(info, config, weight_decay)
        except UserError:
            self._preview = was
            raise

    def end_preview(self) -> None:
        """Editable again (the caller then shows the plan to edit, which resets the tree)."""
        self._preview = False

    @property
    def is_preview(self) -> bool:
        return self._preview

    def _set_structure(self, info: ModelInfo) -> None:
        self._index_of = {layer.name: i for i, layer in enumerate(info.layers)}
        self._children = [[] for _ in info.layers]
        self._parent = [-1] * len(info.layers)
        self._row_in_parent = [0] * len(info.layers)
        for i, layer in enumerate(info.layers):
            if layer.parent is not None:
                p = self._index_of[layer.parent]
                self._parent[i] = p
                self._row_in_parent[i] = len(self._children[p])
                self._children[p].append(i)
        # Parameters no stage claims (a ViT's class token): shown on their module, never hidden in a stage.
        owner = {name: module for name, module, _ in info.parameter_modules}
        self._unassigned = {}
        for name in unassigned_parameters(info):
            self._unassigned.setdefault(self._index_of[owner[name]], []).append(name.rpartition(".")[2])

    def set_plan_config(self, config: PlanConfig) -> None:
        """Raises UserError (and changes nothing) when an edit does not fit the model."""
        if config == self._config:
            return
        old_base = self.base_lr()
        self._recompute(config)
        self._refresh_cells()
        self.plan_changed.emit()
        self._announce_base_lr(old_base)

    def set_weight_decay(self, weight_decay: float) -> None:
        """The tree shows no weight decay: only the report's param groups change, no cell repaints."""
        if weight_decay == self._weight_decay:
            return
        self._weight_decay = weight_decay
        if self._report:
            self._report = with_weight_decay(self._report, weight_decay)

    def set_adapt_norm(self, setting: str) -> None:
        """The --adapt-norm setting (auto | on | off) for the summary line and the norm layers'
        tooltips, which are read when shown; no cell repaints. A run's choice no longer applies."""
        if setting != self._adapt_norm:
            self._adapt_norm, self._norm_choice = setting, None
            self.summary_changed.emit()

    def set_norm_choice(self, choice: NormChoice | None) -> None:
        """What a started run did with the statistics (adapted or as loaded, and by how much)."""
        if choice != self._norm_choice:
            self._norm_choice = choice
            self.summary_changed.emit()

    def base_lr(self) -> float:
        """The root's LR, which is the base LR."""
        return self._report["plan"]["base_lr"] if self._report else self._config.base_lr

    def set_base_lr(self, lr: float) -> bool:
        """Set the base LR (the root's LR); LRs set below the root are kept. False when refused."""
        problem = lr_problem(lr)
        if problem:
            self.edit_refused.emit(problem)
            return False
        if lr != self.base_lr():
            self.set_plan_config(with_base_lr(self._config, lr))
        return True

    def apply_edit(self, edit: PlanEdit) -> bool:
        """Apply one edit; False (and edit_refused says why) when the engine refuses it."""
        if self._preview:
            self.edit_refused.emit(PREVIEW_REFUSAL)
            return False
        config = self._config
        if edit.module == "" and edit.lr is not None:  # the root's LR is the base LR: see set_base_lr
            config, edit = with_base_lr(config, edit.lr), replace(edit, lr=None)
        if edit != PlanEdit(edit.module):
            config = config.with_edit(edit)
        try:
            self.set_plan_config(config)
        except UserError as exc:
            self.edit_refused.emit(str(exc))
            return False
        return True

    @property
    def plan_config(self) -> PlanConfig:
        return self._config

    @property
    def model_info(self) -> ModelInfo | None:
        return self._info

    @property
    def report(self) -> dict:
        return self._report

    def has_thaw_schedule(self) -> bool:
        """Gradual unfreezing thaws some module during the run (its Frozen cell then says when)."""
        return any(row["unfreeze_epoch"] is not None for row in self._rows)

    def summary(self) -> str:
        if not self._report:
            return "No model"
        count = sum(len(names) for names in self._unassigned.values())
        unassigned = f" · {count} unassigned tensor{'s' if count != 1 else ''} (in no stage)" if count else ""
        norm = norm_summary(self._adapt_norm, self._norm_choice) if self._keeps_batch_norm() else ""
        return summary_line(self._report) + norm + unassigned

    def _keeps_batch_norm(self) -> bool:
        """Frozen BatchNorm layers in a trunk that never trains (head only): what --adapt-norm is about."""
        head = self._report["head"] + "."
        trunk_trains = any(p["trainable"] and not p["name"].startswith(head) for p in self._report["parameters"])
        return not trunk_trains and not self.has_thaw_schedule() and any(
            row["frozen"] and not row["train_norm"] and row["type"].startswith("BatchNorm") for row in self._rows)

    def module_row(self, name: str) -> dict:
        return self._rows[self._index_of[name]]

    def index_for(self, name: str, column: int = 0) -> QModelIndex:
        i = self._index_of.get(name)
        if i is None:
            return QModelIndex()
        return self.createIndex(self._row_in_parent[i], column, i)

    def _recompute(self, config: PlanConfig) -> None:
        if self._info is None:
            self._config = config
            return
        plan = build_plan(config, self._info)  # raises UserError on a bad edit: state stays as it was
        self._config = config
        self._set_report(describe_plan(self._info, plan, self._weight_decay))

    def _set_report(self, report: dict) -> None:
        self._report, self._rows = report, report["modules"]
        self._checks = [_check_state(row) for row in self._rows]

    def _announce_base_lr(self, old: float) -> None:
        if self.base_lr() != old:
            self.base_lr_changed.emit(self.base_lr())

    # --- training evidence ---------------------------------------------------------------------

    def set_integrity(self, report: IntegrityReport | None) -> None:
        """Badges from the freeze-integrity check: ✓ on intact frozen modules, ⚠ on every module that
        owns (itself or below) a changed tensor. None clears them."""
        self._integrity = report
        self._changed_under = self._owners_of(report.changed if report else ())
        self._refresh_cells([Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.ToolTipRole])

    def set_layer_stats(self, stats: dict[str, LayerStats]) -> None:
        """Telemetry by dotted module name (the tree's first two levels): the Update ratio column."""
        self._stats = dict(stats)
        self._refresh_cells([Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.BackgroundRole, Qt.ItemDataRole.ToolTipRole])

    def clear_evidence(self) -> None:
        """A new run: no badges, no update ratios, no choice of norm statistics."""
        self._clear_evidence_state()
        self._refresh_cells()
        self.set_norm_choice(None)

    def _clear_evidence_state(self) -> None:
        self._integrity, self._changed_under, self._stats = None, {}, {}

    def _owners_of(self, tensors: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
        owned: dict[int, list[str]] = {}
        for tensor in tensors:
            i = self._owner_row(tensor)
            while i >= 0:
                owned.setdefault(i, []).append(tensor)
                i = self._parent[i]
        return {i: tuple(names) for i, names in owned.items()}

    def _owner_row(self, tensor: str) -> int:
        """"layer1.0.bn1.running_mean" belongs to "layer1.0.bn1" (or the nearest module the tree has)."""
        name = tensor.rpartition(".")[0]
        while name not in self._index_of and name:
            name = name.rpartition(".")[0]
        return self._index_of.get(name, -1)

    # --- finding modules -------------------------------------------------------------------------

    def filter_rows(self, text: str) -> FilterResult:
        """Modules whose dotted name or type contains every word of `text` (any case), with their
        ancestors (to reach them) and descendants (to open them)."""
        matched = self._matches(text.lower().split())
        under_match = [False] * len(self._rows)
        for i, p in enumerate(self._parent):  # info.layers lists a parent before its children
            under_match[i] = matched[i] or (p >= 0 and under_match[p])
        expand: set[str] = set()
        for i in (i for i, m in enumerate(matched) if m):
            p = self._parent[i]
            while p >= 0 and self._rows[p]["name"] not in expand:
                expand.add(self._rows[p]["name"])
                p = self._parent[p]
        shown = {row["name"] for row, show in zip(self._rows, under_match) if show} | expand
        return FilterResult(frozenset(shown), frozenset(expand), sum(matched))

    def _matches(self, words: list[str]) -> list[bool]:
        return [bool(words) and all(w in f"{row['name']} {row['type']}".lower() for w in words) for row in self._rows]

    # --- change notification ------------------------------------------------------------------

    def _all_cells(self) -> list[tuple]:
        return [self._cells_of(i) for i in range(len(self._rows))]

    def _cells_of(self, i: int) -> tuple:
        """Everything each cell of row i shows, so comparing two of these finds the changed cells."""
        row, check = self._rows[i], self._checks[i]
        greyed = check == Qt.CheckState.Checked and row["params"] > 0
        return (
            (),  # the name never changes: a change in column 0 makes QTreeView re-check every row in range
            greyed,
            (greyed, row["trainable_params"]),
            (check, row["frozen"], row["frozen_inherited"], row["train_norm"], row["unfreeze_epoch"],
             row["trainable_params"], self._badge_shown(i), self._thaw_note(i)),
            (row["lr"], row["lr_inherited"], check == Qt.CheckState.Checked),
            (self._stats.get(row["name"]), check, row["unfreeze_epoch"]),
        )

    def _refresh_cells(self, roles: list | None = None) -> None:
        old, self._cells = self._cells, self._all_cells()
        changed = {}
        for i, (before, after) in enumerate(zip(old, self._cells)):
            if before != after:
                columns = [c for c in range(len(HEADERS)) if before[c] != after[c]]
                changed[i] = (columns[0], columns[-1])
        self._emit_changed(changed, roles or [])

    def _emit_changed(self, changed: dict[int, tuple[int, int]], roles: list) -> None:
        """One dataChanged per run of contiguous changed siblings, spanning their changed columns."""
        by_parent: dict[int, list[int]] = {}
        for i in changed:
            by_parent.setdefault(self._parent[i], []).append(i)
        for p, rows in by_parent.items():
            rows.sort(key=lambda i: self._row_in_parent[i])
            run = [rows[0]]
            for i in rows[1:]:
                if self._row_in_parent[i] != self._row_in_parent[run[-1]] + 1:
                    self._emit_run(run, changed, roles)
                    run = []
                run.append(i)
            self._emit_run(run, changed, roles)

    def _emit_run(self, run: list[int], changed: dict[int, tuple[int, int]], roles: list) -> None:
        first, last = run[0], run[-1]
        left = min(changed[i][0] for i in run)
        right = max(changed[i][1] for i in run)
        self.dataChanged.emit(self.createIndex(self._row_in_parent[first], left, first),
                              self.createIndex(self._row_in_parent[last], right, last), roles)

    # --- QAbstractItemModel -----------------------------------------------------------------------

    def index(self, row: int, column: int, parent=QModelIndex()) -> QModelIndex:
        # Called thousands of times per repaint: plain list lookups rather than hasIndex().
        if not (self._rows and 0 <= column < len(HEADERS)):
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0) if row == 0 else QModelIndex()  # the model: one top row
        kids = self._children[parent.internalId()] if parent.column() == 0 else []
        if not 0 <= row < len(kids):
            return QModelIndex()
        return self.createIndex(row, column, kids[row])

    def parent(self, index=QModelIndex()) -> QModelIndex:  # noqa: A003 - Qt's name
        if not index.isValid():
            return QModelIndex()
        p = self._parent[index.internalId()]
        if p < 0:
            return QModelIndex()
        return self.createIndex(self._row_in_parent[p], 0, p)

    def sibling(self, row: int, column: int, index: QModelIndex) -> QModelIndex:
        """Same row, another column (what views ask most): no parent lookup needed."""
        if index.isValid() and row == index.row() and 0 <= column < len(HEADERS):
            return self.createIndex(row, column, index.internalId())
        return super().sibling(row, column, index)

    def hasChildren(self, parent=QModelIndex()) -> bool:
        if not parent.isValid():
            return bool(self._rows)
        return parent.column() == 0 and bool(self._children[parent.internalId()])

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
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(HEADERS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole and section == RATIO:
            return RATIO_EXPLAINED + " Shown during training for the model's first two levels."
        return None

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if self._preview:
            return flags
        if index.column() == FROZEN and self._checks[index.internalId()] is not None:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        elif index.column() == LR:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        answer = self._role_answers.get(role)  # most roles a view asks have no answer here
        if answer is None or not index.isValid():
            return None
        return answer(index.internalId(), index.column())

    def _edit_value(self, i: int, col: int):
        return self._rows[i]["lr"] if col == LR else None

    def _check_value(self, i: int, col: int):
        return self._checks[i] if col == FROZEN else None

    def _font(self, i: int, col: int):
        return self._italic if col == LR and self._rows[i]["lr_inherited"] else None

    def _alignment(self, i: int, col: int):
        return RIGHT_ALIGNED if col in (PARAMS, LR, RATIO) else None

    def _background(self, i: int, col: int):
        return self._ratio_background(i) if col == RATIO else None

    def _name(self, i: int, col: int) -> str:
        return self._rows[i]["name"]

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid():
            return False
        if self._preview:
            self.edit_refused.emit(PREVIEW_REFUSAL)
            return False
        i = index.internalId()
        if index.column() == FROZEN and role == Qt.ItemDataRole.CheckStateRole:
            return self._set_frozen(i, value)
        if index.column() == LR and role == Qt.ItemDataRole.EditRole:
            return self._set_lr(i, value)
        return False

    def _set_frozen(self, i: int, value) -> bool:
        if self._checks[i] is None:
            return False  # nothing to freeze: no parameters
        state = value if isinstance(value, Qt.CheckState) else Qt.CheckState(value)
        return self.apply_edit(PlanEdit(self._rows[i]["name"], frozen=state == Qt.CheckState.Checked))

    def _set_lr(self, i: int, value) -> bool:
        """`value`: a float, or text as typed ("" = inherit the parent's LR)."""
        name = self._rows[i]["name"]
        if value is None or (isinstance(value, str) and not value.strip()):
            if name == "":
                self.edit_refused.emit("The whole model's LR is the base LR: it has no parent to inherit from.")
                return False
            return self.apply_edit(PlanEdit(name, inherit_lr=True))
        try:
            lr = parse_lr(value) if isinstance(value, str) else float(value)
        except (ValueError, TypeError) as exc:
            self.edit_refused.emit(str(exc))
            return False
        if name == "":
            return self.set_base_lr(lr)
        problem = lr_problem(lr)
        if problem:
            self.edit_refused.emit(problem)
            return False
        return self.apply_edit(PlanEdit(name, lr=lr))

    # --- presentation helpers -------------------------------------------------------------------

    def _display(self, i: int, col: int):
        row = self._rows[i]
        if col == LAYER:
            return row["name"].rpartition(".")[2] if row["name"] else self._info.arch
        if col == TYPE:
            return f"{row['type']} · unassigned" if i in self._unassigned else row["type"]
        if col == PARAMS:
            return f"{row['params']:,}" if row["params"] else ""
        if col == LR:
            return format_lr(row["lr"])
        if col == FROZEN:
            text = " ".join(filter(None, [BADGE_TEXT[self._badge(i)[0]] if self._badge(i) else "", self._thaw_note(i)]))
            return text or None
        if col == RATIO:
            stats = self._stats.get(row["name"])
            return None if stats is None else ("0" if stats.update_ratio == 0 else f"{stats.update_ratio:.1e}")
        return None

    def _foreground(self, i: int, col: int):
        row, checked = self._rows[i], self._checks[i] == Qt.CheckState.Checked
        if col == LR and (row["lr_inherited"] or checked):
            return INHERITED
        if col in (TYPE, PARAMS) and checked and row["params"]:  # not LAYER: see _cells_of
            return INHERITED
        if col == FROZEN and self._badge(i):
            return INTACT if self._badge(i)[0] == "intact" else ALARM
        return None

    def _badge_shown(self, i: int) -> tuple:
        """What the cell shows of the badge: "✓" does not change from epoch to epoch (the epoch is in
        the tooltip, read when asked), so a new intact report repaints nothing."""
        badge = self._badge(i)
        return badge if badge and badge[0] == "changed" else badge[:1]

    def _badge(self, i: int) -> tuple:
        """("changed", tensors), ("intact", epoch, checked) or () for row i."""
        report = self._integrity
        if report is None:
            return ()
        if i in self._changed_under:
            return ("changed", self._changed_under[i])
        row = self._rows[i]
        still_frozen = row["unfreeze_epoch"] is None or row["unfreeze_epoch"] >= report.epoch
        if self._checks[i] == Qt.CheckState.Checked and still_frozen:
            return ("intact", report.epoch, report.checked)
        return ()

    def _thaw_note(self, i: int) -> str:
        """On the stage gradual unfreezing thaws (not its children): when it trains, so a checked
        box mid-run does not read as frozen. The run's epoch is known from the integrity reports."""
        row, parent = self._rows[i], self._parent[i]
        epoch = row["unfreeze_epoch"]  # 0-based: the stage trains from epoch `epoch + 1`
        if epoch is None or (parent >= 0 and self._rows[parent]["unfreeze_epoch"] == epoch):
            return ""
        epochs_done = self._integrity.epoch if self._integrity else 0
        return f"trains ep {epoch + 1}+" if epoch <= epochs_done else f"until ep {epoch + 1}"

    def _health(self, i: int) -> str | None:
        row = self._rows[i]
        stats = self._stats.get(row["name"])
        if stats is None:
            return None
        return ratio_health(stats.update_ratio, self._checks[i] == Qt.CheckState.Checked,
                            row["unfreeze_epoch"] is not None)

    def _ratio_background(self, i: int):
        health = self._health(i)
        colour = HEALTH[health][0] if health else None
        return QBrush(colour) if colour is not None else None

    def _tooltip(self, i: int, col: int) -> str:
        row = self._rows[i]
        if col == FROZEN:
            return self._badge_tooltip(i) + self._frozen_tooltip(i)
        if col == LR:
            source = "inherited from a parent" if row["lr_inherited"] else "set here"
            if row["name"] == "":
                source = "the base LR; LRs set below it are kept when it changes"
            return (f"Learning rate {lr_text(row['lr'])} ({source}). Double-click to edit ({LR_RANGE}); "
                    "the value applies to the subtree; empty = inherit.")
        if col == PARAMS:
            return f"{row['params']:,} parameters, {row['trainable_params']:,} trainable."
        if col == RATIO:
            return self._ratio_tooltip(i)
        unassigned = ""
        if i in self._unassigned:
            unassigned = (f"\nUnassigned: {', '.join(self._unassigned[i])} belong to no stage of the model, so no "
                          "preset sets them; they follow this row's Frozen box and LR, inherited from above.")
        if row["name"] == "":
            return f"{self._info.arch}: the whole model ({row['type']}){unassigned}"
        return f"{row['name']} ({row['type']}){unassigned}"

    def _frozen_tooltip(self, i: int) -> str:
        row = self._rows[i]
        name = row["name"] or "the whole model"
        if self._checks[i] is None:
            return f"{row['type']} has no parameters: there is nothing to freeze."
        if row["params"] and 0 < row["trainable_params"] < row["params"]:
            text = f"Partly frozen: {row['trainable_params']:,} of {row['params']:,} parameters train."
        else:
            text = f"{name} is {'frozen' if row['frozen'] else 'trained'}"
            text += " (inherited)." if row["frozen_inherited"] and row["name"] else "."
        if row["is_norm"] and row["frozen"]:
            text += (" Its running statistics update in training." if row["train_norm"]
                     else norm_tooltip(self._adapt_norm, self._norm_choice))
        if row["unfreeze_epoch"] is not None:
            text += f" Gradual unfreezing: trains from epoch {row['unfreeze_epoch'] + 1}."
        return text + " Checking sets the whole subtree."

    def _badge_tooltip(self, i: int) -> str:
        badge = self._badge(i)
        if not badge:
            return ""
        if badge[0] == "intact":
            return f"✓ Unchanged, checked after epoch {badge[1]} ({badge[2]:,} tensors).\n"
        tensors = badge[1]
        more = f" and {len(tensors) - MAX_NAMED_TENSORS} more" if len(tensors) > MAX_NAMED_TENSORS else ""
        return (f"⚠ Changed although frozen (checked after epoch {self._integrity.epoch}): "
                f"{', '.join(tensors[:MAX_NAMED_TENSORS])}{more}.\n")

    def _ratio_tooltip(self, i: int) -> str:
        stats = self._stats.get(self._rows[i]["name"])
        if stats is None:
            return RATIO_EXPLAINED + " Shown during training for the model's first two levels."
        verdict = HEALTH[self._health(i)][1]
        return (f"Update ratio {stats.update_ratio:.2e}: {verdict}\n{RATIO_EXPLAINED}\n"
                f"Gradient norm {stats.grad_norm:.3g} · zero gradients {100 * stats.zero_grad_fraction:.1f} %")


def _check_state(row: dict) -> Qt.CheckState | None:
    """None for a module with nothing to freeze (no parameters, not a norm layer whose mode matters)."""
    if row["params"]:
        if row["trainable_params"] == 0:
            return Qt.CheckState.Checked
        if row["trainable_params"] < row["params"]:
            return Qt.CheckState.PartiallyChecked
        return Qt.CheckState.Unchecked
    if not row["is_norm"]:
        return None
    return Qt.CheckState.Checked if row["frozen"] else Qt.CheckState.Unchecked


class ScientificSpinBox(QDoubleSpinBox):
    """Edits learning rates: scientific notation as typed, steps along 1-2-5 per decade."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setDecimals(18)  # the value is rounded to this many decimals: keep 6 digits down to 1e-8
        self.setRange(MIN_LR, MAX_LR)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return lr_text(value)

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


LR_EDITOR_HINT = f"Learning rate for this module and everything below it ({LR_RANGE}); arrow keys step 1-2-5."


class LrEditor(ScientificSpinBox):
    """The tree's LR editor. It remembers what the person entered: the spin box puts its last valid
    value back when text it cannot read is confirmed, but the model must see that text to say why
    it refuses it; and opening and closing the editor without entering anything sets no LR."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.entered: str | None = None  # typed text, or the value stepped to; None: nothing entered
        self.setToolTip(LR_EDITOR_HINT)
        self.lineEdit().textEdited.connect(self._typed)
        self.valueChanged.connect(self._stepped)

    def start(self, lr: float) -> None:
        self.setValue(lr)
        self.entered = None

    def _typed(self, text: str) -> None:
        self.entered = text
        try:
            parse_lr(text) if text.strip() else None
        except ValueError as exc:
            self.setToolTip(str(exc))
            return
        self.setToolTip(LR_EDITOR_HINT)

    def _stepped(self, value: float) -> None:
        self.entered = self.text()


class LrDelegate(QStyledItemDelegate):
    def createEditor(self, parent, option, index):
        return LrEditor(parent)

    def setEditorData(self, editor, index):
        editor.start(float(index.data(Qt.ItemDataRole.EditRole)))

    def setModelData(self, editor, model, index):
        if editor.entered is not None:  # the text as entered: the model parses it and says why it refuses it
            model.setData(index, editor.entered, Qt.ItemDataRole.EditRole)


MANY_CHANGES = 8  # changed ranges in one event-loop turn beyond which the view repaints all of itself


class LayerTreeView(QTreeView):
    """The tree with its LR editor, a filter and a context menu for the subtree operations."""

    def __init__(self, parent=None):
        super().__init__(parent)
        # Asked for up to a hundred times per edit: PySide's viewport() wrapper costs ~0.07 ms a call.
        self._viewport = self.viewport()
        self.setObjectName("layerTree")
        self.setItemDelegateForColumn(LR, LrDelegate(self))
        self.setAlternatingRowColors(True)
        self.setUniformRowHeights(True)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # "layer4…conv1" keeps both ends of a name
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed
                             | QAbstractItemView.EditTrigger.SelectedClicked)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._show_menu)
        self.setToolTip("Every module of the model: tick Frozen to stop it training, double-click LR to set its learning rate.")
        self._filter = ""
        self._hidden: set[str] = set()
        self._changes_this_turn, self._whole_viewport_due = 0, False  # dataChanged signals in this event-loop turn

    def setModel(self, model) -> None:  # noqa: N802 - Qt override
        super().setModel(model)
        header = self.header()
        header.setStretchLastSection(False)
        # Never ResizeToContents: it asks data() of every row after every change (seconds on big trees).
        # The Layer column takes the room the others leave, but never less than LAYER_MIN_CHARACTERS:
        # a narrow tree scrolls sideways rather than squeeze names to "resne…" (a Stretch section would).
        for col in range(len(HEADERS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
        header.sectionResized.connect(self._other_column_resized)
        model.modelReset.connect(self._on_model_reset)
        model.plan_changed.connect(self._fit_columns)  # a gradual plan's thaw notes need a wider Frozen
        model.edit_refused.connect(self._show_refusal)
        self._fit_columns()

    def layer_column_minimum(self) -> int:
        """Room for a name a few levels deep (resnet18 > layer4 > 0 > downsample)."""
        return self.indentation() * 3 + self.fontMetrics().horizontalAdvance("x" * LAYER_MIN_CHARACTERS)

    def _fit_layer_column(self) -> None:
        header = self.header()
        others = sum(header.sectionSize(col) for col in range(TYPE, len(HEADERS)) if not header.isSectionHidden(col))
        width = max(self.layer_column_minimum(), self._viewport.width() - others)
        if header.sectionSize(LAYER) != width:
            header.resizeSection(LAYER, width)

    def _other_column_resized(self, column: int, _old: int, _new: int) -> None:
        if column != LAYER:
            self._fit_layer_column()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit_layer_column()

    def dataChanged(self, top_left, bottom_right, roles=()) -> None:  # noqa: N802 - Qt override
        # QTreeView's own version asks the model about every cell of the range and re-measures
        # every row between its ends (half the cost of an edit on a big tree). Rows here have one
        # height and names that never change, so repainting the range's rectangle is all it takes.
        # Open editors and assistive technology still get Qt's full treatment.
        if self.state() == QAbstractItemView.State.EditingState or QAccessible.isActive():
            super().dataChanged(top_left, bottom_right, roles)
            return
        if self._whole_viewport_due:
            return
        self._changes_this_turn += 1
        if self._changes_this_turn == 1:
            QTimer.singleShot(0, self._end_of_turn)
        if self._changes_this_turn > MANY_CHANGES:
            # A preset or a big subtree: finding each range's rectangle costs more than repainting
            # the whole viewport, which such a change covers anyway.
            self._whole_viewport_due = True
            self._viewport.update()
            return
        rect = self._range_rect(top_left, bottom_right)
        if not rect.isEmpty():
            self._viewport.update(rect)

    def _end_of_turn(self) -> None:
        self._changes_this_turn, self._whole_viewport_due = 0, False

    def _range_rect(self, top_left, bottom_right) -> QRect:
        """The viewport rectangle of a changed range of siblings (and the rows shown between them)."""
        first, last = self.visualRect(top_left), self.visualRect(bottom_right)
        if first.isEmpty() and last.isEmpty() and not self._hidden:
            return QRect()  # inside a collapsed subtree: nothing on screen changes
        if first.isEmpty() or last.isEmpty():  # an end hidden by the filter: be safe
            return self._viewport.rect()
        return first.united(last)

    def _on_model_reset(self) -> None:
        self._hidden = set()  # a reset forgets hidden rows
        self.expandToDepth(0)
        self._fit_columns()
        if self._filter:
            self.set_filter(self._filter)

    def _fit_columns(self) -> None:
        """Column widths from the texts they can hold, measured once per model."""
        info = self.model().model_info
        # A thaw note ("✓ trains ep 3+") only where gradual unfreezing schedules one; else a badge.
        frozen = ["Frozen", "✓ trains ep 88+" if self.model().has_thaw_schedule() else "⚠"]
        widest = {TYPE: ["Type", "BatchNorm2d"], PARAMS: ["Params", "88,888,888"], FROZEN: frozen,
                  LR: ["LR", "8.888e-08"], RATIO: [HEADERS[RATIO], "8.8e-08"]}
        if info is not None:
            widest[TYPE] = ["Type"] + sorted({layer.type for layer in info.layers}, key=len)[-1:]
            widest[PARAMS] = ["Params", f"{max(layer.params for layer in info.layers):,}"]
        metrics = self.fontMetrics()
        for col, texts in widest.items():
            extra = 44 if col == FROZEN else 24  # the checkbox, or the cell's margins and the sort arrow
            width = max(metrics.horizontalAdvance(t) for t in texts) + extra
            if col == TYPE:  # a long type name is elided: the cell's tooltip and the Layer's name it
                width = min(width, metrics.horizontalAdvance("BatchNorm2d") + extra)
            self.header().resizeSection(col, width)
        self._fit_layer_column()

    def _show_refusal(self, message: str) -> None:
        rect = self.visualRect(self.currentIndex())
        QToolTip.showText(self.viewport().mapToGlobal(rect.bottomLeft()), message, self.viewport())

    # --- the filter -------------------------------------------------------------------------------

    def set_filter(self, text: str) -> int:
        """Show only modules whose dotted name or type contains every word of `text`, with their
        ancestors (opened) and descendants; "" shows everything. Returns how many modules match."""
        self._filter = text.strip()
        model = self.model()
        if not isinstance(model, LayerTreeModel) or model.model_info is None:
            return 0
        result = model.filter_rows(self._filter)
        names = {layer.name for layer in model.model_info.layers if layer.name}
        hidden = names - result.shown if self._filter else set()
        for name in hidden ^ self._hidden:
            index = model.index_for(name)
            self.setRowHidden(index.row(), index.parent(), name in hidden)
        self._hidden = hidden
        for name in result.expand:
            self.expand(model.index_for(name))
        return result.matches

    def filter_text(self) -> str:
        return self._filter

    # --- the context menu ---------------------------------------------------------------------------

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
        text, ok = QInputDialog.getText(self, "Learning rate", f"LR for {name or 'the whole model'} ({LR_RANGE}):",
                                        text=lr_text(current))
        if ok:
            model.setData(model.index_for(name, LR), text, Qt.ItemDataRole.EditRole)


class LayerFilterEdit(QLineEdit):
    """The tree's search box: filters `view` by dotted name or type as the person types."""

    def __init__(self, view: LayerTreeView, parent=None):
        super().__init__(parent)
        self.setObjectName("layerFilter")
        self.setPlaceholderText("Filter layers by name or type, e.g. layer3.1 or BatchNorm")
        self.setClearButtonEnabled(True)
        self.setToolTip("Shows the modules whose dotted name or type contains every word typed.")
        self._view = view
        self.textChanged.connect(self._filter)

    def _filter(self, text: str) -> None:
        matches = self._view.set_filter(text)
        self.setToolTip(f"{matches} modules match." if text.strip() else
                        "Shows the modules whose dotted name or type contains every word typed.")
