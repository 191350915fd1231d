"""The Search dialog's behaviour: the space offered for the configuration shown, Start and Stop of a
search off the GUI thread (app.search_worker), the trials as they finish, and Use best, which applies the
best trial's plan and settings as one undoable change on the plan's history (as applied advice is)."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from app.dataset_controller import DatasetController
from app.plan_controller import PlanController
from app.search_plan import best_settings, default_rows, search_job
from app.search_worker import SearchRunner
from app.session_state import Configuration, Messages, ShownRun
from app.settings_controller import SettingsController
from engine.errors import UserError
from engine.events import format_duration
from engine.search.trials import TrialRow, best_row
from engine.search.worker import SearchJob
from widgets.search_dialog import SearchRequest


class SearchController(QObject):
    context_changed = Signal(str)  # the dataset, model and weights every trial shares
    space_offered = Signal(object, bool)  # list[KnobRow], head only
    running_changed = Signal(bool)
    trials_changed = Signal(object, bool)  # list[TrialRow], whether a best trial exists
    status_changed = Signal(str)
    failed = Signal(str)  # one line ("" clears it)
    best_applied = Signal(str)  # the line that says what Use best did
    ended = Signal()  # the search's thread has ended (finished, stopped or failed)

    def __init__(self, runs_root: Path, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 datasets: DatasetController, settings: SettingsController, plan: PlanController, parent=None):
        super().__init__(parent)
        self._runs_root, self._configuration, self._shown_run, self._messages = (runs_root, configuration, shown_run,
                                                                                 messages)
        self._datasets, self._settings, self._plan = datasets, settings, plan
        self._runner: SearchRunner | None = None
        self._job: SearchJob | None = None  # the last search started: Use best applies its best trial
        self._rows: list[TrialRow] = []
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self._runner is not None

    # --- the space -----------------------------------------------------------------------------------

    @Slot()
    def offer(self) -> None:
        """The dialog opens: the configuration shown, and the default space for it (head only when the
        plan is feature extraction). While a search runs the dialog keeps showing that search's."""
        if self.running:
            return
        config = self._configuration.draft()
        self.context_changed.emit(f"Every trial: {Path(config.data.root).name or 'no dataset'} · "
                                  f"{config.model.arch} · weights {config.model.weights} · "
                                  f"{config.data.image_size} px · device {config.train.device}")
        self.set_head_only(config.plan.strategy == "feature-extraction")

    @Slot(bool)
    def set_head_only(self, head_only: bool) -> None:
        rows = default_rows(head_only, self._configuration.draft(), self._settings.model_info)
        self.space_offered.emit(rows, head_only)

    # --- running -------------------------------------------------------------------------------------

    @Slot(object)
    def start(self, request: SearchRequest) -> None:
        if self.running:
            return
        if self._shown_run.running:
            self.failed.emit("A run is in progress: stop it to search.")
            return
        try:
            job = search_job(request, self._configuration.draft(), self._settings.model_info,
                             self._datasets.state.scan, self._runs_root)
        except UserError as exc:
            self.failed.emit(str(exc))
            return
        self._job, self._rows, self._started = job, [], time.monotonic()
        runner = self._runner = SearchRunner(job, self)
        runner.rows_changed.connect(self._on_rows)
        runner.finished.connect(self._on_finished)
        runner.failed.connect(self._on_failed)
        self.failed.emit("")
        self.trials_changed.emit([], False)
        self.status_changed.emit(f"Searching; trials go to {job.base.out_dir}")
        self.running_changed.emit(True)
        runner.start()

    @Slot()
    def stop(self) -> None:
        """The trial in flight ends at its next batch (failed, as Ctrl-C does); nothing waits for it here."""
        if self._runner is not None:
            self._runner.stop()
            self.status_changed.emit("Stopping the trial in flight…")

    @Slot(object)
    def _on_rows(self, rows: list[TrialRow]) -> None:
        self._rows = rows
        best = best_row(rows)
        self.trials_changed.emit(rows, best is not None)
        if self._runner is not None and not self._runner.control.stop_requested:
            self.status_changed.emit(self._progress_line(rows, best))

    def _progress_line(self, rows: list[TrialRow], best: TrialRow | None) -> str:
        job = self._job
        done = sum(row.state in ("complete", "pruned") for row in rows)
        budget = (f"{done}/{job.trials} trials finished" if job.timeout_s is None else
                  f"{done} trials finished, {format_duration(time.monotonic() - self._started)} of "
                  f"{format_duration(job.timeout_s)}")
        running = [row.number for row in rows if row.state == "running"]
        parts = [budget, f"best {best.value:.4f} (trial {best.number})" if best else "no best yet"]
        if running:
            parts.append(f"trial {running[-1]} running")
        return " · ".join(parts)

    @Slot(object)
    def _on_finished(self, result: dict) -> None:
        stopped = self._runner is not None and self._runner.control.stop_requested
        self._end()
        best = result["best"]
        found = f"{result['trials']} complete, {result['pruned']} pruned"
        said = (f"best {best['value']:.4f} (trial {best['trial']})" if best else "no trial completed")
        ended = "Stopped" if stopped else "Finished"
        self.status_changed.emit(f"{ended}: {found}; {said}. Journal {result['storage']}")

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._end()
        self.status_changed.emit("The search ended with an error.")
        self.failed.emit(message)

    def _end(self) -> None:
        self._runner.deleteLater()
        self._runner = None
        self.running_changed.emit(False)
        self.ended.emit()

    # --- the result ----------------------------------------------------------------------------------

    @Slot()
    def use_best(self) -> None:
        """The best trial's plan, augmentation, weight decay, label smoothing and epochs, as one undoable change."""
        best = best_row(self._rows)
        if best is None or self._job is None or self.running or self._shown_run.refused("use the search's best trial"):
            return
        draft = self._configuration.draft()
        try:
            plan, data, train = best_settings(self._job, best.params, draft)
        except UserError as exc:
            self.failed.emit(str(exc))
            return
        text = f"Use search trial {best.number}"
        self._plan.change_with_settings(text, plan, data, train)
        line = f"Applied the search's best trial ({best.number}, val accuracy {best.value:.4f}); Ctrl+Z undoes"
        self._messages.notice.emit(line)
        self.best_applied.emit(line)

    def shutdown(self) -> None:
        """The window closes: the search stops (the window waits for `ended` before it closes)."""
        self.stop()
