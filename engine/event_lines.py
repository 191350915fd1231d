"""A run's events as JSON lines on a stream: what another process (the window, a job log) reads.

One object per line, flushed at once, each with an "event" key: "status", "started", "batch",
"epoch", then "result" or "failed" at the end. The values are the events' own fields
(engine.events), so a reader rebuilds them with the same dataclasses.
"""

from __future__ import annotations

import json
from typing import IO

from .events import BatchEvent, Callbacks, EpochEvent, FitResult, RunStarted


class EventLines(Callbacks):
    """Writes each event to `stream` and passes it on to `inner` (e.g. the progress printer)."""

    def __init__(self, stream: IO[str], inner: Callbacks | None = None) -> None:
        self.stream, self.inner = stream, inner or Callbacks()

    def write(self, event: str, fields: dict) -> None:
        self.stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.stream.flush()  # a reader sees each event as it happens, not when a buffer fills

    def on_status(self, text: str, done: int = 0, total: int = 0) -> None:
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
