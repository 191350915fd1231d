"""The Search dialog (Train ▸ Search hyperparameters…): the space, a budget, Start/Stop, the trials as
they finish, and Use best.

A pure view: it shows the space, the trials and the lines it is given and emits what the person asks
for. Each knob's range is text as `search --space` writes it ("1e-4:0.1", "none,standard", "3"), so
the engine checks a typed range exactly as the command line's; Fix puts the window's own setting in.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QSpinBox, QSplitter, QVBoxLayout, QWidget)

from engine.search.trials import TrialRow
from widgets.search_results import SearchResults

BUDGET_UNITS = ("trials", "minutes")


@dataclass(frozen=True)
class KnobRow:
    """One knob as the dialog shows it."""

    name: str
    range_text: str  # the default range, as --space writes it
    current_text: str  # the window's own setting: what Fix puts in
    log: bool = False
    hint: str = ""


@dataclass(frozen=True)
class SearchRequest:
    """What Start asks for: the space as --space texts, the budget, the journal file ("" = a new one)."""

    specs: tuple[str, ...]
    head_only: bool
    trials: int | None  # a budget of trials, or
    minutes: float | None  # of minutes
    storage: str


class _KnobEditor:
    """A knob's line: its name, its range (editable), and Fix."""

    def __init__(self, row: KnobRow):
        self.row = row
        self.label = QLabel(row.name)
        self.label.setToolTip(row.hint)
        self.edit = QLineEdit(row.range_text)
        self.edit.setObjectName(f"searchKnob_{row.name}")
        self.edit.setToolTip(f"LOW:HIGH, A,B or one value{' (searched on a log scale)' if row.log else ''}. "
                             f"{row.hint}")
        self.fix = QCheckBox("Fix")
        self.fix.setObjectName(f"searchFix_{row.name}")
        self.fix.setToolTip(f"Every trial uses one value: the window's ({row.current_text}) unless you type another.")
        self.fix.toggled.connect(self._fixed)

    def _fixed(self, fixed: bool) -> None:
        self.edit.setText(self.row.current_text if fixed else self.row.range_text)

    def spec(self) -> str:
        return f"{self.row.name}={self.edit.text().strip()}"


class SearchDialog(QDialog):
    start_requested = Signal(object)  # SearchRequest
    stop_requested = Signal()
    head_only_toggled = Signal(bool)  # the space to show changes: the controller answers with show_space
    use_best_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("searchDialog")
        self.setWindowTitle("Search hyperparameters")
        self.running = False
        self.has_best = False
        self.editors: list[_KnobEditor] = []
        self.context = QLabel()
        self.context.setObjectName("searchContext")
        self.context.setWordWrap(True)
        self.head_only = QCheckBox("Head only (feature extraction: every trial on the same cached trunk features)")
        self.head_only.setObjectName("searchHeadOnly")
        self.head_only.toggled.connect(self.head_only_toggled)
        self.space_box = QGroupBox("Space")
        self.space_grid = QGridLayout(self.space_box)
        self.budget = QSpinBox()
        self.budget.setObjectName("searchBudget")
        self.budget.setRange(1, 100_000)
        self.budget.setValue(20)
        self.budget_unit = QComboBox()
        self.budget_unit.setObjectName("searchBudgetUnit")
        self.budget_unit.addItems(BUDGET_UNITS)
        self.budget_unit.setToolTip("Trials: finished trials wanted in the journal. Minutes: no trial starts "
                                    "after that long (the one in flight finishes).")
        self.storage = QLineEdit()
        self.storage.setObjectName("searchStorage")
        self.storage.setPlaceholderText("a new journal in the runs folder")
        self.storage.setToolTip("An Optuna journal file: a file of an earlier search with the same settings "
                                "continues it.")
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("searchStart")
        self.start_button.clicked.connect(self._start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("searchStop")
        self.stop_button.setToolTip("Stop the trial in flight at its next batch (it is marked failed, as Ctrl-C "
                                    "does in the command line); finished trials stay in the journal.")
        self.stop_button.clicked.connect(self.stop_requested)
        self.use_best_button = QPushButton("Use best")
        self.use_best_button.setObjectName("searchUseBest")
        self.use_best_button.setToolTip("Apply the best trial's plan and settings to the window (Ctrl+Z undoes).")
        self.use_best_button.clicked.connect(self.use_best_requested)
        self.status = QLabel("")
        self.status.setObjectName("searchStatus")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = QLabel("")
        self.error.setObjectName("searchError")
        self.error.setStyleSheet("color: #b00020")
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.results = SearchResults()
        self._lay_out()
        self._show_buttons()
        self.resize(1100, 680)

    def _lay_out(self) -> None:
        budget = QHBoxLayout()
        budget.addWidget(self.budget)
        budget.addWidget(self.budget_unit)
        form = QFormLayout()
        form.addRow("Budget", budget)
        form.addRow("Journal", self.storage)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.use_best_button)
        left = QWidget()
        side = QVBoxLayout(left)
        side.setContentsMargins(0, 0, 0, 0)
        side.addWidget(self.context)
        side.addWidget(self.head_only)
        side.addWidget(self.space_box)
        side.addLayout(form)
        side.addLayout(buttons)
        side.addWidget(self.status)
        side.addWidget(self.error)
        side.addStretch(1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.results)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # --- what the controller shows ---------------------------------------------------------------

    def show_context(self, text: str) -> None:
        """The dataset, model and weights every trial shares."""
        self.context.setText(text)

    def show_space(self, rows: list[KnobRow], head_only: bool) -> None:
        self.head_only.blockSignals(True)
        self.head_only.setChecked(head_only)
        self.head_only.blockSignals(False)
        for editor in self.editors:
            for widget in (editor.label, editor.edit, editor.fix):
                self.space_grid.removeWidget(widget)
                widget.setParent(None)  # gone from the dialog now (findChild too), deleted later
                widget.deleteLater()
        self.editors = [_KnobEditor(row) for row in rows]
        for i, editor in enumerate(self.editors):
            self.space_grid.addWidget(editor.label, i, 0)
            self.space_grid.addWidget(editor.edit, i, 1)
            self.space_grid.addWidget(editor.fix, i, 2)
        self._show_buttons()

    def show_running(self, running: bool) -> None:
        self.running = running
        if running:
            self.error.setText("")
        self._show_buttons()

    def show_status(self, text: str) -> None:
        self.status.setText(text)

    def show_error(self, text: str) -> None:
        """One line ("" clears it)."""
        self.error.setText(text.splitlines()[0] if text else "")

    def show_trials(self, rows: list[TrialRow], has_best: bool) -> None:
        self.has_best = has_best
        self.results.show_rows(rows, {editor.row.name for editor in self.editors if editor.row.log})
        self._show_buttons()

    def _show_buttons(self) -> None:
        for widget in (self.start_button, self.head_only, self.space_box, self.budget, self.budget_unit,
                       self.storage):
            widget.setEnabled(not self.running)
        self.stop_button.setEnabled(self.running)
        self.use_best_button.setEnabled(self.has_best and not self.running)

    # --- what the person asks for ----------------------------------------------------------------

    def knob_edit(self, name: str) -> QLineEdit:
        return next(editor.edit for editor in self.editors if editor.row.name == name)

    def request(self) -> SearchRequest:
        in_minutes = self.budget_unit.currentText() == "minutes"
        return SearchRequest(specs=tuple(editor.spec() for editor in self.editors),
                             head_only=self.head_only.isChecked(),
                             trials=None if in_minutes else self.budget.value(),
                             minutes=float(self.budget.value()) if in_minutes else None,
                             storage=self.storage.text().strip())

    def _start(self) -> None:
        self.error.setText("")
        self.start_requested.emit(self.request())

    def done(self, code: int) -> None:  # closing the dialog stops a search still running
        if self.running:
            self.stop_requested.emit()
        super().done(code)
