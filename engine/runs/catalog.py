"""What the window lists about past runs, read from their folders (no Qt: it runs off the GUI thread).

A run folder's run.json says the configuration, the outcome and (from issue 9 on) a `status`.
Older folders have no status: it is inferred from what they hold. A folder marked running whose
lock nobody holds was interrupted (a crash, a kill, a power cut).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.events import FitResult
from engine.runs.records import RunRecord
from engine.runs.run_folder import RunFolder, list_runs
from engine.task_figures import headline

STATUSES = ("running", "finished", "stopped", "failed", "interrupted")


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs list."""

    path: Path
    started: str  # "YYYY-MM-DD HH:MM", for people and for sorting
    arch: str
    strategy: str
    epochs_run: int
    epochs_planned: int
    best_val_accuracy: float | None
    status: str  # one of STATUSES
    dataset: str = ""  # the dataset folder's name: runs of different datasets look alike otherwise
    task: str = "single-label"
    best_figure: tuple[str, float | None] = ("accuracy", None)  # the task's: accuracy, mAP or R² (task_figures)
    config: dict = field(default_factory=dict, compare=False)
    result: FitResult | None = field(default=None, compare=False)  # run.json's, as every reader reads it
    given_name: str = ""  # the name the person gave the run ("" for none)
    data_root: str = ""  # the dataset folder's whole path, as recorded: the runs list filters by it

    @property
    def name(self) -> str:
        """What the run is called wherever it is shown: its given name, else its folder's."""
        return self.given_name or self.path.name

    @property
    def is_noise(self) -> bool:
        """A run that left nothing to compare: it failed, or ended before its first epoch."""
        return self.status == "failed" or (self.status in ("stopped", "interrupted") and self.epochs_run == 0)


def run_status(folder: RunFolder, record: RunRecord) -> str:
    """finished / stopped / failed / running, or interrupted for a run marked running (or without
    any outcome) that no process holds any more."""
    status = record.status
    if status not in ("running", "finished", "stopped", "failed"):  # a folder from before statuses
        if record.result is not None:
            status = "stopped" if record.result.stopped == "user" else "finished"
        else:
            status = "running"
    if status == "running" and not folder.in_use():
        return "interrupted"
    return status


def _started(folder: RunFolder, record: RunRecord) -> str:
    """The recorded start; for a folder from before run.json recorded it, when run.json was last written."""
    if record.started is not None:
        return record.started.replace("T", " ")[:16]
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(folder.record_path.stat().st_mtime))
    except OSError:
        return ""


def read_summary(folder: RunFolder) -> RunSummary | None:
    """The folder's row, or None when its run.json cannot be read (it is left out, not guessed)."""
    try:
        record = folder.read_run()
    except UserError:
        return None
    result = record.result
    epochs = folder.read_epochs()
    accuracies = [e.val_accuracy for e in epochs if e.val_accuracy is not None]
    best = result.best_val_accuracy if result is not None else None
    if best is None:
        best = max(accuracies) if accuracies else None
    task = result.task if result is not None else (epochs[0].task if epochs else "single-label")
    return RunSummary(
        path=folder.path, started=_started(folder, record), arch=record.arch or "?", strategy=record.strategy or "?",
        epochs_run=result.epochs_run if result is not None else len(epochs), epochs_planned=record.epochs_planned or 0,
        best_val_accuracy=best, status=run_status(folder, record), dataset=_dataset_name(record.data_root),
        task=task, best_figure=_best_figure(task, best, result, epochs), config=record.config, result=result,
        given_name=record.name or "", data_root=record.data_root or "")


def _best_figure(task: str, best_accuracy: float | None, result: FitResult | None, epochs) -> tuple[str, float | None]:
    """The run's headline figure at its best epoch: the result's, else the last epoch marked best
    (a run still going, or killed)."""
    if task == "single-label":
        return headline(task, best_accuracy, None)
    if result is not None and result.best_val_metrics is not None:
        return headline(task, None, result.best_val_metrics)
    bests = [e for e in epochs if e.is_best]
    return headline(task, None, bests[-1].val_metrics if bests else None)


def _dataset_name(root: str | None) -> str:
    return Path(root).name if root else ""


def list_summaries(runs_root: Path) -> list[RunSummary]:
    """Every readable run under `runs_root`, newest first."""
    return [s for s in map(read_summary, list_runs(runs_root)) if s is not None]


def distinct_names(names: list[str], folders: list[Path]) -> list[str]:
    """Each run's shown name, its folder's name added where two runs share one: a legend or a column
    header must not merge two runs (nor a dict keyed by name drop one)."""
    return [f"{name} ({folder.name})" if names.count(name) > 1 and name != folder.name else name
            for name, folder in zip(names, folders)]


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists are compared whole."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# Every run has its own folder: that it differs says nothing about how the runs differ.
NOT_COMPARED = frozenset({"out_dir"})


def config_diff(configs: list[dict]) -> list[tuple[str, list[str]]]:
    """The configuration keys whose values differ between runs, with each run's value as readable
    text (keys a run lacks show "—"), in key order; the run's own folder is left out."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats) - NOT_COMPARED) if flats else []
    rows = []
    for key in keys:
        values = [readable_value(f[key]) if key in f else "—" for f in flats]
        if len(set(values)) > 1:
            rows.append((key, values))
    return rows


def readable_value(value: Any) -> str:
    """A configuration value as a person reads it: no JSON quotes, numbers short, plan edits as
    "module: field value" phrases."""
    if value is None:
        return "default"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {readable_value(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return "; ".join(map(_readable_item, value)) if value else "none"
    return str(value)


def _readable_item(item: Any) -> str:
    """A plan edit ({"module": "layer1", "frozen": true}) reads as "layer1: frozen yes"."""
    if isinstance(item, dict) and "module" in item:
        rest = {k: v for k, v in item.items() if k != "module" and v not in (None, False)}
        return f"{item['module']}: {readable_value(rest)}" if rest else str(item["module"])
    return readable_value(item)


def val_accuracy_curve(folder: RunFolder) -> tuple[list[int], list[float]]:
    """Epoch numbers and validation accuracies from metrics.jsonl (epochs without one skipped); a
    multi-label or regression run's headline figure instead (mAP, R²)."""
    figures = [(e.epoch, headline(e.task, e.val_accuracy, e.val_metrics)[1]) for e in folder.read_epochs()]
    measured = [(epoch, value) for epoch, value in figures if value is not None]
    return [epoch for epoch, _ in measured], [value for _, value in measured]


def is_deletable_run(path: Path, runs_root: Path) -> str:
    """Why `path` must not be deleted ("" when it may): only a run folder directly under the runs
    folder, not in use, is ever removed."""
    folder = RunFolder(path)
    if Path(path).resolve().parent != Path(runs_root).resolve():
        return f"{path} is not in the runs folder {runs_root}"
    if not folder.exists():
        return f"{path} is not a run folder"
    if folder.in_use():
        return f"{path.name} is training now: stop it first"
    return ""
