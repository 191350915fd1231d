"""The Runs tab: every run in the workspace, its actions, and a comparison of the runs selected.

It shows what it is given (RunSummary rows, curves, a configuration diff) and says what the person
asks for through signals carrying run folder paths; it reads no file itself. Filtering by dataset and
hiding failed runs work on the rows it was given, so they never wait for a disk.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QItemSelectionModel, QSignalBlocker, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QPushButton, QSplitter, QStyledItemDelegate, QTableView, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from engine.runs.catalog import RunSummary
from engine.task_figures import format_figure
from engine.runs.run_name import MAX_NAME_LENGTH
from widgets.dataset_filter import DatasetFilter
from widgets.plots import distinct_colours
from widgets.row_table import RowTableModel

STATUS_COLOURS = {"finished": "#2e7d32", "stopped": "#8a6d00", "failed": "#c62828", "running": "#1565c0",
                  "interrupted": "#b26a00"}
STATUS_TIPS = {
    "finished": "Trained every epoch asked for (or stopped early when validation stopped improving).",
    "stopped": "Stopped by you; Continue goes on from the last completed epoch.",
    "failed": "Ended by an error; run.json says which.",
    "running": "Training now.",
    "interrupted": "Marked running, but no process holds it: the program was closed or killed mid-run. "
                   "Continue goes on from the last completed epoch.",
}
VISIBLE_ROWS = 8  # the table never shrinks below this many rows: runs are compared by scanning them
LEGEND_LIMIT = 6  # more curves than this: a legend would cover the plot; the table's column headers carry the colours
SWATCH_SIDE = 12


def colour_swatch(colour) -> QIcon:
    pixmap = QPixmap(SWATCH_SIDE, SWATCH_SIDE)
    pixmap.fill(QColor(*colour))
    return QIcon(pixmap)


def describe_run(run: RunSummary) -> str:
    """One line that tells this run from the others: what it trained on, how, and how well (its
    task's figure: accuracy, mAP or R²)."""
    accuracy = format_figure(*run.best_figure)
    dataset = run.dataset or "unknown dataset"
    if run.task != "single-label":
        dataset += f" ({run.task})"
    return (f"{run.name}: {dataset}, {run.arch}, {run.strategy}, {run.epochs_run}/{run.epochs_planned} epochs, "
            f"best {accuracy}, {run.status} — {run.path}")


# Looked up once: the view asks data() and flags() a few thousand times per fill (every cell's size for
# ResizeToContents, then its paint), so each call is kept to a list look-up; making each text per call
# was about half the GUI thread's time of filling or filtering a list of 50 runs.
DISPLAY, EDIT, TOOLTIP, FOREGROUND, USER = (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole,
                                            Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.ForegroundRole,
                                            Qt.ItemDataRole.UserRole)
ROW_FLAGS = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemNeverHasChildren
NAME_FLAGS = ROW_FLAGS | Qt.ItemFlag.ItemIsEditable


class RunsModel(RowTableModel):
    """One row per run folder, newest first. The name cell is editable (but not while the run trains):
    an edit is a request, rename_requested, and the row shows the new name once the view is told."""

    # "Best val": accuracy for single-label runs, mAP or R² for the others (the cell names which).
    HEADERS = ("Name", "Started", "Dataset", "Architecture", "Strategy", "Epochs", "Best val", "Status")
    NAME_COLUMN = HEADERS.index("Name")
    DATASET_COLUMN = HEADERS.index("Dataset")
    STATUS_COLUMN = HEADERS.index("Status")

    rename_requested = Signal(str, str)  # run folder, the name typed

    def __init__(self, parent=None):
        super().__init__(parent)
        self._texts: list[tuple[str, ...]] = []  # each row's cell texts, made when the rows are set

    def set_runs(self, runs: list[RunSummary], dataset_labels: dict[str, str] | None = None) -> None:
        """The rows, and what the Dataset column calls each dataset root (default: its folder's name)."""
        labels = dataset_labels or {}
        self._texts = [row_texts(run, labels.get(run.data_root) or run.dataset or "?") for run in runs]
        self.set_items(runs)

    def run(self, row: int) -> RunSummary:
        return self._items[row]

    def runs(self) -> list[RunSummary]:
        return list(self._items)

    def row_of(self, path: Path) -> int:
        return next((i for i, r in enumerate(self._items) if r.path == Path(path)), -1)

    def flags(self, index):
        row = index.row()
        if row < 0:
            return Qt.ItemFlag.NoItemFlags
        if index.column() == self.NAME_COLUMN and self._items[row].status != "running":
            return NAME_FLAGS
        return ROW_FLAGS

    def setData(self, index, value, role=EDIT) -> bool:  # noqa: N802 - Qt's name
        if role != EDIT or not self.flags(index) & Qt.ItemFlag.ItemIsEditable:
            return False
        run, typed = self._items[index.row()], str(value).strip()
        if typed != run.name:  # an edit that changed nothing writes nothing
            self.rename_requested.emit(str(run.path), typed)
        return True

    def data(self, index, role=DISPLAY):
        row = index.row()
        if row < 0:  # an invalid index
            return None
        if role == DISPLAY or role == EDIT:
            return self._texts[row][index.column()]
        if role == TOOLTIP:
            return self._tip(self._items[row], index.column())
        if role == FOREGROUND and index.column() == self.STATUS_COLUMN:
            return QColor(STATUS_COLOURS.get(self._items[row].status, "#000000"))
        if role == USER:
            return str(self._items[row].path)
        return None

    def _tip(self, run: RunSummary, column: int) -> str:
        if column == self.STATUS_COLUMN:
            return STATUS_TIPS.get(run.status, "")
        if column == self.NAME_COLUMN:
            if run.status == "running":
                return f"{run.path}\nTraining: it can be renamed when it has ended."
            return f"{run.path}\nDouble-click or F2 to rename (the folder keeps its name)."
        if column == self.DATASET_COLUMN and run.data_root:
            return run.data_root
        return str(run.path)


def row_texts(run: RunSummary, dataset: str) -> tuple[str, ...]:
    """A run's cells, in RunsModel.HEADERS order."""
    return (run.name, run.started, dataset, run.arch, run.strategy, f"{run.epochs_run}/{run.epochs_planned}",
            format_figure(*run.best_figure), run.status)


class NameDelegate(QStyledItemDelegate):
    """The name's editor: one line, no longer than a name may be; empty = the folder's name again."""

    def createEditor(self, parent, option, index):  # noqa: N802 - Qt's name
        editor = QLineEdit(parent)
        editor.setObjectName("runNameEditor")
        editor.setMaxLength(MAX_NAME_LENGTH)
        editor.setPlaceholderText("empty: the folder's name")
        return editor


class RunsTable(QTableView):
    """F2 renames the current row's run, whichever of its cells is current."""

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt override
        current = self.currentIndex()
        if event.key() == Qt.Key.Key_F2 and current.isValid():
            name = self.model().index(current.row(), RunsModel.NAME_COLUMN)
            if self.model().flags(name) & Qt.ItemFlag.ItemIsEditable:
                self.setCurrentIndex(name)
                self.edit(name)
            event.accept()
            return
        super().keyPressEvent(event)


class RunsView(QWidget):
    """The runs table, its actions, and the comparison of two or more selected runs."""

    selection_changed = Signal(list)  # the selected runs' paths (str), in table order
    continue_requested = Signal(str)
    export_requested = Signal(str)
    open_folder_requested = Signal(str)
    use_configuration_requested = Signal(str)
    delete_requested = Signal(str)
    rename_requested = Signal(str, str)  # run folder, the name typed ("" = its folder's name again)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = RunsModel(self)
        self.model.rename_requested.connect(self.rename_requested)
        self.table = RunsTable()
        self.table.setObjectName("runsList")
        self.table.setModel(self.model)
        self.table.setItemDelegateForColumn(RunsModel.NAME_COLUMN, NameDelegate(self.table))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked)  # and F2 (RunsTable)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)  # more runs in view
        self.table.setMinimumHeight(self._rows_height(VISIBLE_ROWS))
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip("Every run in the runs folder. Select one to see its curves and insight; "
                              "select two or more (Ctrl/Shift-click) to compare them. Double-click a name "
                              "(or press F2) to rename the run.")
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        # Keys move the current row after the selection: the detail follows whichever comes last.
        self.table.selectionModel().currentRowChanged.connect(self._show_detail)
        self._all_runs: list[RunSummary] = []
        self._dataset_labels: dict[str, str] = {}  # dataset root -> its label in the filter and the list
        self.show_all = QCheckBox("Show all")
        self.show_all.setObjectName("showAllRunsCheck")
        self.show_all.setToolTip("Also list the runs that failed or were stopped before their first epoch.")
        self.show_all.toggled.connect(self._refill)
        self.dataset_filter = DatasetFilter()
        self.dataset_filter.chosen_changed.connect(self._refill)
        self.buttons = {}
        row = QHBoxLayout()
        for key, text, tip, signal in (
                ("continue", "Continue", "Train the selected run on, from its last completed epoch, "
                 "up to the Epochs setting.", self.continue_requested),
                ("export", "Export…", "Export the selected run's best checkpoint.", self.export_requested),
                ("open", "Open folder", "Show the run's folder in the file manager.", self.open_folder_requested),
                ("use", "Use its settings", "Make the selected run's dataset, model, plan and settings the "
                 "ones shown, to edit and train again.", self.use_configuration_requested),
                ("delete", "Delete", "Move the run's folder to the trash.", self.delete_requested)):
            button = QPushButton(text)
            button.setObjectName(f"run{key.capitalize()}Button")
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, s=signal: self._emit_for_current(s))
            row.addWidget(button)
            self.buttons[key] = button
        row.addStretch(1)
        # Its own row: beside five buttons its "(N hidden)" made the tab wider than a 1024 px screen allows.
        filters = QHBoxLayout()
        filters.addWidget(self.dataset_filter)
        filters.addWidget(self.show_all)
        filters.addStretch(1)
        self.detail = QLabel("No runs yet: the runs you train are listed here.")
        self.detail.setObjectName("runDetailLabel")
        self.detail.setWordWrap(True)
        self.compare_plot = pg.PlotWidget()
        self.compare_plot.setObjectName("compareRunsPlot")
        self.compare_plot.setBackground("w")
        self.compare_plot.setTitle("Validation accuracy (mAP, R² for other tasks) of the selected runs",
                                   color=(80, 86, 96), size="9pt")
        self.compare_plot.setLabel("bottom", "epoch")
        self.compare_plot.setYRange(0, 1)
        self.legend = self.compare_plot.addLegend(offset=(-5, 5))
        self.compare_plot.setMinimumHeight(120)
        self.diff_table = QTableWidget()
        self.diff_table.setObjectName("configDiffTable")
        self.diff_table.setToolTip("The settings that differ between the selected runs; each column's swatch is "
                                   "its curve's colour.")
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        compare = QSplitter(Qt.Orientation.Horizontal)
        compare.addWidget(self.compare_plot)
        compare.addWidget(self.diff_table)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(filters)
        top_layout.addWidget(self.table, 1)
        top_layout.addLayout(row)
        top_layout.addWidget(self.detail)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(compare)
        split.setChildrenCollapsible(False)
        split.setStretchFactor(0, 3)  # the list first: the comparison needs less room than the runs to pick from
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split)
        self._update_buttons()

    # --- what the window tells it ------------------------------------------------------------------

    def show_runs(self, runs: list[RunSummary]) -> None:
        """New rows; the selection (by folder) and the dataset chosen survive a refresh. Failed runs
        and runs stopped before their first epoch are listed only with Show all."""
        self._all_runs = list(runs)
        self._dataset_labels = self.dataset_filter.set_roots(list(dict.fromkeys(r.data_root for r in runs)))
        self._refill()

    def show_renamed(self, path: str, name: str) -> None:
        """The run at `path` was given `name` ("" = none): its row says so, without reading anything."""
        self._all_runs = [replace(run, given_name=name) if run.path == Path(path) else run for run in self._all_runs]
        self._refill()

    def _refill(self) -> None:
        runs = self.listed_runs()
        selected = self.selected_paths()
        self.model.set_runs(runs, self._dataset_labels)
        selection = self.table.selectionModel()
        with QSignalBlocker(selection):  # putting back the selection is not a new selection
            for path in selected:
                row = self.model.row_of(Path(path))
                if row >= 0:
                    selection.select(self.model.index(row, 0), QItemSelectionModel.SelectionFlag.Select
                                     | QItemSelectionModel.SelectionFlag.Rows)
        if self.selected_paths() != selected:  # a selected run is gone
            self.selection_changed.emit(self.selected_paths())
        hidden = len(self._of_chosen_dataset()) - len(runs)
        self.show_all.setText(f"Show all ({hidden} hidden)" if hidden else "Show all")
        if not self._all_runs:
            self.detail.setText("No runs yet: the runs you train are listed here.")
        elif not self.selected_paths():
            self.detail.setText("Select a run to see its curves, plan and insight; select two or more to compare them.")
        else:
            self._show_detail()
        self._update_buttons()

    def listed_runs(self) -> list[RunSummary]:
        runs = self._of_chosen_dataset()
        return runs if self.show_all.isChecked() else [run for run in runs if not run.is_noise]

    def _of_chosen_dataset(self) -> list[RunSummary]:
        root = self.dataset_filter.chosen()
        return list(self._all_runs) if root is None else [run for run in self._all_runs if run.data_root == root]

    def select_run(self, path: str | Path) -> bool:
        row = self.model.row_of(Path(path))
        if row < 0:
            return False
        self.table.selectRow(row)
        return True

    def show_comparison(self, curves: dict[str, tuple[list[int], list[float]]],
                        diff: list[tuple[str, list[str]]], names: list[str]) -> None:
        """Overlay each run's validation accuracy; list the keys that differ (one column per run, its
        header showing the run's curve colour). A legend only while it leaves the plot readable."""
        self.compare_plot.clear()
        colours = distinct_colours(max(len(curves), len(names)))
        named = len(curves) <= LEGEND_LIMIT
        for (name, (epochs, values)), colour in zip(curves.items(), colours):
            self.compare_plot.plot(epochs, values, pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=5,
                                   symbolBrush=colour, name=name if named else None)
        self.legend.setVisible(named)
        self.diff_table.clear()
        self.diff_table.setColumnCount(1 + len(names))
        self.diff_table.setHorizontalHeaderItem(0, QTableWidgetItem("Setting"))
        for column, (name, colour) in enumerate(zip(names, colours), start=1):
            self.diff_table.setHorizontalHeaderItem(column, QTableWidgetItem(colour_swatch(colour), name))
        self.diff_table.setRowCount(len(diff))
        for r, (key, values) in enumerate(diff):
            self.diff_table.setItem(r, 0, QTableWidgetItem(key))
            for c, value in enumerate(values, start=1):
                self.diff_table.setItem(r, c, QTableWidgetItem(value))
        self.diff_table.resizeColumnsToContents()

    def selected_paths(self) -> list[str]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [str(self.model.run(r).path) for r in rows]

    # --- the person's choices --------------------------------------------------------------------------

    def _on_selection(self, *_) -> None:
        self._update_buttons()
        self._show_detail()
        self.selection_changed.emit(self.selected_paths())

    def _show_detail(self, *_) -> None:
        """The run just clicked (the current row, when it is selected), else the only one selected."""
        selection = self.table.selectionModel()
        rows = sorted(index.row() for index in selection.selectedRows())
        if not rows:
            return
        current = self.table.currentIndex()
        row = current.row() if current.isValid() and current.row() in rows else rows[-1]
        text = describe_run(self.model.run(row))
        if len(rows) > 1:
            text = f"{len(rows)} runs compared below. {text}"
        self.detail.setText(text)

    def _rows_height(self, rows: int) -> int:
        header = self.table.horizontalHeader().sizeHint().height()
        return header + rows * self.table.verticalHeader().defaultSectionSize() + 2 * self.table.frameWidth()

    def _update_buttons(self) -> None:
        selected = [self.model.run(self.model.row_of(Path(p))) for p in self.selected_paths()]
        one = selected[0] if len(selected) == 1 else None
        for button in self.buttons.values():
            button.setEnabled(one is not None)
        if one is not None:
            busy = one.status == "running"
            for key in ("continue", "export", "use", "delete"):
                self.buttons[key].setEnabled(not busy)

    def _emit_for_current(self, signal) -> None:
        paths = self.selected_paths()
        if len(paths) == 1:
            signal.emit(paths[0])
