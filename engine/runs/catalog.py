"""What the window lists about past runs, read from their folders (no Qt: it runs off the GUI thread).

A run folder's run.json says the configuration, the outcome and (from issue 9 on) a `status`.
Older folders have no status: it is inferred from what they hold. A folder marked running whose
lock nobody holds was interrupted (a crash, a kill, a power cut).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.runs.run_folder import RunFolder, list_runs

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
    config: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.path.name


def run_status(folder: RunFolder, record: dict) -> str:
    """finished / stopped / failed / running, or interrupted for a run marked running (or without
    any outcome) that no process holds any more."""
    status = record.get("status")
    result = record.get("result") if isinstance(record.get("result"), dict) else None
    if status not in ("running", "finished", "stopped", "failed"):  # a folder from before statuses
        if result is not None:
            status = "stopped" if result.get("stopped") == "user" else "finished"
        else:
            status = "running"
    if status == "running" and not folder.in_use():
        return "interrupted"
    return status


def _started(folder: RunFolder, record: dict) -> str:
    stamp = record.get("started")
    if isinstance(stamp, str) and stamp:
        return stamp.replace("T", " ")[:16]
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(folder.record_path.stat().st_mtime))
    except OSError:
        return ""


def read_summary(folder: RunFolder) -> RunSummary | None:
    """The folder's row, or None when its run.json cannot be read (it is left out, not guessed)."""
    try:
        record = folder.read_record()
    except UserError:
        return None
    config = record["config"]
    model, plan, train = (config.get(key) if isinstance(config.get(key), dict) else {}
                          for key in ("model", "plan", "train"))
    result = record.get("result") if isinstance(record.get("result"), dict) else {}
    metrics = folder.read_metrics()
    accuracies = [m["val_accuracy"] for m in metrics if isinstance(m.get("val_accuracy"), (int, float))]
    best = result.get("best_val_accuracy")
    if not isinstance(best, (int, float)):
        best = max(accuracies) if accuracies else None
    return RunSummary(
        path=folder.path, started=_started(folder, record), arch=str(model.get("arch", "?")),
        strategy=str(plan.get("strategy", "?")), epochs_run=int(result.get("epochs_run", len(metrics)) or 0),
        epochs_planned=int(train.get("epochs", 0) or 0), best_val_accuracy=best,
        status=run_status(folder, record), config=config)


def list_summaries(runs_root: Path) -> list[RunSummary]:
    """Every readable run under `runs_root`, newest first."""
    return [s for s in map(read_summary, list_runs(runs_root)) if s is not None]


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


def config_diff(configs: list[dict]) -> list[tuple[str, list[str]]]:
    """The configuration keys whose values differ between runs, with each run's value as text
    (keys a run lacks show "—"), in key order."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [json.dumps(f[key]) if key in f else "—" for f in flats]
        if len(set(values)) > 1:
            rows.append((key, values))
    return rows


def val_accuracy_curve(folder: RunFolder) -> tuple[list[int], list[float]]:
    """Epoch numbers and validation accuracies from metrics.jsonl (epochs without one skipped)."""
    epochs, values = [], []
    for line in folder.read_metrics():
        if isinstance(line.get("epoch"), int) and isinstance(line.get("val_accuracy"), (int, float)):
            epochs.append(line["epoch"])
            values.append(float(line["val_accuracy"]))
    return epochs, values


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
