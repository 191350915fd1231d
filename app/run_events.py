"""What a run says while it trains, whoever runs it: a thread of this process (app.worker) or
child processes (app.training_process); and why it failed, in one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from engine.errors import (FrozenTensorsChanged, UserError, WeightsUnavailable, out_of_memory_message,
                           worker_death_message)


@dataclass(frozen=True)
class RunFailure:
    """Why a run ended without a result, in one line, and what kind of failure it was."""

    message: str
    kind: str = "error"  # "error" | "weights-unavailable" | "frozen-tensors-changed"

    @classmethod
    def from_exception(cls, exc: BaseException) -> RunFailure:
        if isinstance(exc, WeightsUnavailable):
            return cls(describe_failure(exc), "weights-unavailable")
        if isinstance(exc, FrozenTensorsChanged):
            return cls(describe_failure(exc), "frozen-tensors-changed")
        return cls(describe_failure(exc))


def describe_failure(exc: BaseException) -> str:
    """One line for the person; out-of-memory gets advice, anything unexpected its type."""
    if isinstance(exc, UserError):
        return str(exc)
    memory = out_of_memory_message(exc, "training")
    if memory:
        return memory
    worker = worker_death_message(exc, advice="try a smaller Batch size, or close programs that use much memory")
    if worker:
        return worker
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


class RunEvents(QObject):
    """What a run says while it trains, whoever runs it: a thread of this process (TrainingWorker)
    or child processes (app.training_process.TrainingProcess)."""

    run_started = Signal(object)  # RunStarted
    status_changed = Signal(str, int, int)
    batch_finished = Signal(object)  # BatchEvent
    epoch_finished = Signal(object)  # EpochEvent
    finished = Signal(object)  # FitResult
    failed = Signal(object)  # RunFailure


PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding app/ and engine/


CLI_ERROR_PREFIX = "transfer-studio: error: "
