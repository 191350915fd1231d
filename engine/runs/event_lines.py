"""A run's events as JSON lines on a stream: what another process (the window, a job log) reads.

One object per line, flushed at once, each with an "event" key: "status", "started", "batch",
"epoch", then "result" or "failed" at the end. The values are the events' own fields
(engine.events), so a reader rebuilds them with the same dataclasses.
"""

from __future__ import annotations

import json
import time
from typing import IO

from engine.events import (BatchEvent, Callbacks, EpochEvent, FitResult, IntegrityReport, LayerStats, NormChoice,
                           RunStarted)


class EventLines(Callbacks):
    """Writes each event to `stream` and passes it on to `inner` (e.g. the progress printer).
    A stream that cannot be written (a reader that left, a full device, a closed or missing
    stdout) ends the writing at its first failure, never the run: `lost` says so afterwards."""

    STATUS_GAP_S = 0.1  # a status per decoded image would be thousands of lines for the reader to parse

    def __init__(self, stream: IO[str], inner: Callbacks | None = None) -> None:
        self.stream, self.inner = stream, inner or Callbacks()
        self.lost: str | None = None if stream is not None else "no stream to write to"
        self._last_status = ("", 0.0)  # text, when written

    def write(self, event: str, fields: dict) -> None:
        if self.lost:
            return
        line = json.dumps({"event": event, **fields}, default=str) + "\n"
        try:
            self.stream.write(line)
            self.stream.flush()  # a reader sees each event as it happens, not when a buffer fills
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self.lost = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

    def on_status(self, text: str, done: int = 0, total: int = 0) -> None:
        """Written when the text changes, when the work is done, and at most ten times a second between."""
        now = time.monotonic()
        last_text, last_time = self._last_status
        if text != last_text or done >= total or now - last_time >= self.STATUS_GAP_S:
            self._last_status = (text, now)
            self.write("status", {"text": text, "done": done, "total": total})
        self.inner.on_status(text, done, total)

    def on_run_started(self, event: RunStarted) -> None:
        self.write("started", event.to_dict())
        self.inner.on_run_started(event)

    def on_batch_end(self, event: BatchEvent) -> None:
        self.write("batch", event.to_dict())
        self.inner.on_batch_end(event)

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.write("epoch", event.to_dict())
        self.inner.on_epoch_end(event)

    def on_result(self, result: FitResult) -> None:
        self.write("result", result.summary())

    def on_failed(self, message: str) -> None:
        self.write("failed", {"error": message})


def _layers(raw: dict) -> dict[str, LayerStats]:
    return {name: LayerStats(**stats) for name, stats in (raw or {}).items()}


def _epoch_event(raw: dict) -> EpochEvent:
    integrity = raw.get("integrity")
    return EpochEvent(**{**raw, "newly_unfrozen": tuple(raw.get("newly_unfrozen", ())), "layers": _layers(raw.get("layers")),
                         "integrity": None if integrity is None else IntegrityReport(
                             **{**integrity, "changed": tuple(integrity["changed"])})})


_READERS = {
    "status": lambda raw: (raw["text"], raw["done"], raw["total"]),
    "started": lambda raw: RunStarted(**{**raw, "class_names": tuple(raw["class_names"]), "notes": tuple(raw["notes"]),
                                         "norm_choice": NormChoice.from_dict(raw.get("norm_choice"))}),
    "batch": lambda raw: BatchEvent(**{**raw, "layers": _layers(raw.get("layers"))}),
    "epoch": _epoch_event,
    "result": FitResult.from_summary,
    "failed": lambda raw: raw["error"],
}


def read_event_line(line: str) -> tuple[str, object] | None:
    """The (kind, value) an EventLines line carries: the event's dataclass (a status is its
    (text, done, total), a failure its message); None for a line that is not one (a rank's stray
    print, a version mismatch)."""
    try:
        raw = json.loads(line)
        kind = raw.pop("event")
        return kind, _READERS[kind](raw)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
