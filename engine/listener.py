"""The listener base: everything that watches or records a run implements some of these hooks.

The epoch loop calls each hook on every listener, in the order declared in
engine.training.listeners; none of them changes training. A listener that must survive a resume
keeps its own state (`state_dict`/`load_state_dict`, as Lightning's callbacks do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type names only: the root imports nothing above it
    from engine.events import BatchEvent, EpochEvent, FitResult, RunStarted
    from engine.plan.plan import Plan


class Listener:
    stop_reason: str | None = None  # set to end the run after the current epoch

    def on_fit_start(self, started: RunStarted) -> None: ...

    def on_epoch_start(self, epoch: int, plan: Plan) -> None: ...

    def on_before_optimizer_step(self) -> None: ...

    def on_after_optimizer_step(self) -> None: ...

    def on_batch_end(self, event: BatchEvent) -> None: ...

    def on_epoch_end(self, event: EpochEvent) -> None: ...

    def on_fit_end(self, result: FitResult) -> None: ...

    def on_fit_failed(self, error: Exception) -> None:
        """The run raised after on_fit_start (diverged, frozen tensors changed, any fault); the
        error propagates after every listener has seen it."""
