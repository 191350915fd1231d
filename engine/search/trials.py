"""The study's trials as plain rows: what a table, a plot of value against trial and a per-parameter
effect view show. Read from the study (not from one worker's outcomes) so that a continued search and
trials of other workers on the same journal show too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Optuna's state names, as the command line's lines and the table say them
_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # "complete" | "pruned" | "failed" | "running" | "waiting"
    value: float | None  # best val accuracy (complete); the last epoch's reported one (pruned)
    params: dict[str, Any]  # the draw: exactly the knobs that shaped the trial's run
    seconds: float | None  # None while it runs
    error: str | None = None  # why a failed trial failed


def trial_rows(study) -> list[TrialRow]:
    """Every trial of `study`, by number."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value
        if value is None and trial.intermediate_values:  # a pruned trial: where it stood when stopped
            value = trial.intermediate_values[max(trial.intermediate_values)]
        seconds = None
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append(TrialRow(number=trial.number, state=_STATES.get(trial.state.name, trial.state.name.lower()),
                             value=value, params=dict(trial.user_attrs.get("values", trial.params)),
                             seconds=seconds, error=trial.user_attrs.get("error")))
    return sorted(rows, key=lambda row: row.number)


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The complete trial of the highest value, the earliest among equals (as worker.best_trial)."""
    complete = [row for row in rows if row.state == "complete" and row.value is not None]
    return max(complete, key=lambda row: (row.value, -row.number)) if complete else None
