"""The run folder's CSV files (val_predictions.csv, embeddings.csv): written atomically, read back
with a one-line error naming the file and what it should hold."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from engine.atomic import atomic_write_bytes
from engine.errors import UserError


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_bytes(Path(path), text.getvalue().encode())


def read_csv_rows(path: str | Path, columns: Sequence[str], what: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row after the header, which must be exactly `columns`."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:  # not UTF-8; a field beyond csv's limit (131,072 characters)
        raise UserError(f"{path} is not {what}, or is damaged ({exc})") from None
    if not rows or tuple(rows[0]) != tuple(columns):
        raise UserError(f"{path} is not {what} (expected the columns {','.join(columns)})")
    return list(enumerate(rows[1:], 2))
