"""The listener base: everything that watches or records a run implements some of these hooks.

The epoch loop calls each hook on every listener, in the order it declares (EpochLoop._listeners);
none of them changes training. A listener that must survive a resume keeps its own state
(`state_dict`/`load_state_dict`, as Lightning's callbacks do); resume.pt holds every listener's
state under its `state_key`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

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

    # --- resume ---------------------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        """Where resume.pt keeps this listener's state. Files outlive code: renaming a listener
        whose state_dict is not empty needs the old key read too (RunFolder.read_resume_state)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to carry on as if never stopped: plain values only (dicts,
        lists, numbers, strings, tensors), since resume.pt is loaded with weights_only=True."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what state_dict gave; not called when resume.pt holds nothing for this
        listener (a file written before it kept state), which leaves it fresh."""


def listener_states(listeners: Iterable[Listener]) -> dict[str, dict[str, Any]]:
    """state_key -> state of every listener that has one."""
    states: dict[str, dict[str, Any]] = {}
    for listener in listeners:
        state = listener.state_dict()
        if not state:
            continue
        if listener.state_key in states:  # two would overwrite each other's state
            raise ValueError(f"two listeners keep their state under {listener.state_key!r}")
        states[listener.state_key] = state
    return states


def load_listener_states(listeners: Iterable[Listener], states: dict[str, dict[str, Any]]) -> None:
    """Give each listener its saved state; one without a saved state stays fresh."""
    for listener in listeners:
        if listener.state_key in states:
            listener.load_state_dict(states[listener.state_key])
