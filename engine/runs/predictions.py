"""val_predictions.csv: one record per validation image (path, true, pred, loss, confidence, top 3).

Written at each new best epoch by the ValidationRecords listener; read back here, and only here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from engine.errors import UserError
from engine.runs.csv_files import read_csv_rows, write_csv


TOP_K = 3


PREDICTION_COLUMNS = ("path", "true", "pred", "loss", "confidence",
                      *(f"top{i}{suffix}" for i in range(1, TOP_K + 1) for suffix in ("", "_probability")))


@dataclass(frozen=True)
class PredictionRecord:
    path: str  # relative to the dataset root, posix separators
    true: str
    pred: str
    loss: float  # cross-entropy of this image
    confidence: float  # probability of the predicted class
    top: tuple[tuple[str, float], ...]  # up to TOP_K (class, probability), most probable first

    def summary(self) -> dict:
        return {"path": self.path, "true": self.true, "pred": self.pred, "loss": self.loss,
                "confidence": self.confidence}


@torch.no_grad()
def prediction_records(paths: Sequence[str], labels: torch.Tensor, logits: torch.Tensor,
                       class_names: Sequence[str]) -> list[PredictionRecord]:
    """Records from labels and logits on any device: computed there, one transfer at the end."""
    logits = logits.float()
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1)  # as the trainer's confusion matrix counts, also for tied logits
    k = min(TOP_K, len(class_names))
    top_p, top_i = probs.topk(k, dim=1)
    table = torch.cat([labels[:, None].float(), pred[:, None].float(),
                       nn.functional.cross_entropy(logits, labels, reduction="none")[:, None],
                       probs.gather(1, pred[:, None]), top_p, top_i.float()], dim=1).cpu().tolist()
    records = []
    for path, row in zip(paths, table):
        top = tuple((class_names[int(i)], p) for p, i in zip(row[4:4 + k], row[4 + k:]))
        records.append(PredictionRecord(path, class_names[int(row[0])], class_names[int(row[1])],
                                        row[2], row[3], top))
    return records


def write_predictions(path: Path, records: Sequence[PredictionRecord]) -> None:
    def row(r: PredictionRecord) -> list:
        top = [value for name, p in r.top for value in (name, f"{p:.6g}")]
        top += [""] * (2 * TOP_K - len(top))  # fewer than TOP_K classes: blank columns
        return [r.path, r.true, r.pred, f"{r.loss:.6g}", f"{r.confidence:.6g}", *top]

    write_csv(path, PREDICTION_COLUMNS, (row(r) for r in records))


def read_predictions(csv_path: str | Path) -> list[PredictionRecord]:
    """The records of a val_predictions.csv; one-line UserError for a missing or malformed file."""
    path = Path(csv_path)
    rows = read_csv_rows(path, PREDICTION_COLUMNS, "a predictions file")
    records = []
    for number, row in rows:
        try:
            if len(row) != len(PREDICTION_COLUMNS) or not row[0]:
                raise ValueError
            top = tuple((row[i], _probability(row[i + 1])) for i in range(5, len(row), 2) if row[i])
            loss = float(row[3])
            if not loss >= 0:  # a cross-entropy (inf where it overflowed): a negative or NaN one is damage
                raise ValueError
            records.append(PredictionRecord(row[0], row[1], row[2], loss, _probability(row[4]), top))
        except ValueError:
            raise UserError(f"{path}, line {number}: not a valid predictions row") from None
    return records


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError
    return value


def relative_path(path: str, root: str) -> str:
    """A record's path: relative to the dataset root, posix separators."""
    return _relative(path, root, os.getcwd())


@functools.lru_cache(maxsize=2**16)
def _relative(path: str, root: str, cwd: str) -> str:
    # Remembered: each best epoch of a run, and each trial of a search, writes the same paths again.
    return Path(os.path.relpath(path, root)).as_posix()
