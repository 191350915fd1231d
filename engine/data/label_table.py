"""A labels CSV beside the images: multi-label, regression, or one label a row.

Columns: `path` (relative to the CSV's folder), then either `labels` (names separated by spaces or
`;`, empty = none) or `value` (a number), and an optional `split` (train / val, used as given).
The task is read from the columns (`auto`) or named (`--task`); a task the columns cannot give
is one UserError line. A row that cannot be used never stops the read: it is kept, with its line
number and the reason (missing file, unknown label, not a number, duplicate path, ...), so the
scan can list every one of them.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from engine.errors import UserError

TASKS = ("single-label", "multi-label", "regression")
TASK_CHOICES = ("auto", *TASKS)
SPLITS = ("train", "val")
_SEPARATORS = re.compile(r"[;\s]+")
MAX_ROWS = 5_000_000  # beyond this a CSV is not a label table (a log, a dump): refused before memory goes


@dataclass(frozen=True)
class TableRow:
    line: int  # 1-based line of the CSV (the header is line 1)
    path: str  # absolute
    labels: tuple[str, ...] = ()  # single- and multi-label
    value: float | None = None  # regression
    split: str | None = None  # "train" | "val" | None (split here)


@dataclass(frozen=True)
class BadRow:
    line: int
    path: str
    reason: str

    def describe(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class LabelTable:
    csv_path: str
    root: str  # the CSV's folder: where the relative paths start
    task: str
    label_names: tuple[str, ...]  # sorted; ("value",) for regression
    rows: tuple[TableRow, ...]
    bad: tuple[BadRow, ...]


def is_label_table(path: str | os.PathLike) -> bool:
    """Whether `path` names a labels CSV (a file ending in .csv) rather than a dataset folder."""
    return str(path).lower().endswith(".csv") and not Path(path).is_dir()


def check_task(task: str) -> None:
    if task not in TASK_CHOICES:
        raise UserError(f"task must be one of {', '.join(TASK_CHOICES)}, got {task!r}")


def read_label_table(csv_path: str | os.PathLike, task: str = "auto",
                     known_labels: Sequence[str] | None = None) -> LabelTable:
    """The table's rows and bad rows. `known_labels` (a model's): a label outside them is a bad row."""
    check_task(task)
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise UserError(f"labels CSV not found: {csv_path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            raw_rows = []
            for raw in reader:
                raw_rows.append((reader.line_num, raw))
                if len(raw_rows) > MAX_ROWS:
                    raise UserError(f"{csv_path} has more than {MAX_ROWS:,} rows; not a labels CSV")
    except UnicodeDecodeError:
        raise UserError(f"{csv_path} is not a text CSV (UTF-8)") from None
    except csv.Error as exc:
        raise UserError(f"{csv_path} is not a readable CSV ({exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read {csv_path}: {exc.strerror or exc}") from None
    task = _task_from_columns(header, task, csv_path)
    root = path.parent.resolve()
    rows, bad = [], []
    first_line: dict[str, int] = {}
    for line, raw in raw_rows:
        raw = {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in raw.items()}
        row, reason = _read_row(raw, line, root, task, known_labels)
        if reason is None:
            key = os.path.normcase(row.path)
            if key in first_line:
                reason = f"duplicate path (first on line {first_line[key]})"
            else:
                first_line[key] = line
        if reason is None:
            rows.append(row)
        else:
            bad.append(BadRow(line, raw.get("path", "").strip(), reason))
    if task == "regression":
        names: tuple[str, ...] = ("value",)
    else:
        names = tuple(known_labels) if known_labels is not None else tuple(sorted({n for r in rows for n in r.labels}))
    return LabelTable(str(path), str(root), task, names, tuple(rows), tuple(bad))


def _task_from_columns(header: list[str], task: str, csv_path) -> str:
    if "path" not in header:
        raise UserError(f"{csv_path} has no 'path' column (columns: {', '.join(header) or 'none'})")
    has_labels, has_value = "labels" in header, "value" in header
    if not has_labels and not has_value:
        raise UserError(f"{csv_path} needs a 'labels' column (multi-label) or a 'value' column (regression)")
    if task == "auto":
        if has_labels and has_value:
            raise UserError(f"{csv_path} has both 'labels' and 'value' columns: name the task "
                            f"(--task multi-label or --task regression)")
        return "multi-label" if has_labels else "regression"
    if task == "regression" and not has_value:
        raise UserError(f"--task regression needs a 'value' column in {csv_path}")
    if task in ("multi-label", "single-label") and not has_labels:
        raise UserError(f"--task {task} needs a 'labels' column in {csv_path}")
    return task


def _read_row(raw: dict, line: int, root: Path, task: str,
              known: Sequence[str] | None) -> tuple[TableRow | None, str | None]:
    """(row, None), or (None, why the row cannot be used)."""
    relative = raw.get("path", "").strip()
    if not relative:
        return None, "empty path"
    split = raw.get("split", "").strip().lower() or None
    if split is not None and split not in SPLITS:
        return None, f"split must be train or val, got {raw.get('split', '').strip()!r}"
    full = (root / relative) if not os.path.isabs(relative) else Path(relative)
    if not full.is_file():
        return None, f"missing file {relative}"
    if task == "regression":
        text = raw.get("value", "").strip()
        try:
            value = float(text)
        except ValueError:
            return None, f"value {text!r} is not a number"
        if not math.isfinite(value):
            return None, f"value {text!r} is not a finite number"
        return TableRow(line, str(full), value=value, split=split), None
    labels = tuple(dict.fromkeys(n for n in _SEPARATORS.split(raw.get("labels", "").strip()) if n))
    if known is not None:
        unknown = [n for n in labels if n not in known]
        if unknown:
            return None, f"unknown label {unknown[0]!r}"
    if task == "single-label" and len(labels) != 1:
        return None, f"a single-label row needs exactly one label, got {len(labels)}"
    return TableRow(line, str(full), labels=labels, split=split), None


# --- what the scan reports ----------------------------------------------------------------------


def co_occurrence(label_sets: Sequence[Sequence[int]], k: int) -> list[list[int]]:
    """(K, K): images holding both labels i and j; the diagonal is each label's count."""
    matrix = [[0] * k for _ in range(k)]
    for present in label_sets:
        for i in present:
            for j in present:
                matrix[i][j] += 1
    return matrix


def value_summary(values: Sequence[float], bins: int = 10) -> dict:
    """Range, mean, spread and a histogram of regression targets (counts per equal-width bin)."""
    if not values:
        return {"count": 0}
    low, high = min(values), max(values)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    width = (high - low) / bins if high > low else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / width))] += 1
    edges = [low + i * width for i in range(bins + 1)]
    return {"count": len(values), "min": low, "max": high, "mean": mean, "std": std,
            "histogram": {"edges": edges, "counts": counts}}


def histogram_lines(summary: dict, width: int = 40) -> list[str]:
    """A text histogram: one line per bin, `[low, high)  count  ####`."""
    hist = summary.get("histogram")
    if not hist:
        return []
    top = max(hist["counts"]) or 1
    edges = hist["edges"]
    return [f"  [{edges[i]:>10.4g}, {edges[i + 1]:>10.4g})  {c:>6}  {'#' * round(width * c / top)}"
            for i, c in enumerate(hist["counts"])]
