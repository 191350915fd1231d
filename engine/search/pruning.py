"""The pruner as a trainer listener: each epoch's validation accuracy goes to the search, which may end
the run after that epoch.

It asks through `stop_reason`, as early stopping does, rather than raising out of the epoch loop: the
run then ends like any other (run.json "stopped", its checkpoint and metrics complete), and the
search marks the trial pruned once fit has returned.
"""

from __future__ import annotations

from typing import Callable

from engine.events import EpochEvent
from engine.listener import Listener

PRUNED = "pruned"  # FitResult.stopped of a pruned trial


def schedule_step(epoch: int, epochs: int) -> int:
    """Where `epoch` is in its run's schedule, in percent: the step a trial reports at. Trials of
    different lengths meet at the same point of their LR schedules (a 12-epoch trial's epoch 4 and a
    3-epoch trial's epoch 1 are both at 33); by epoch number, a long trial still at a high LR was
    compared with short ones already annealed and finished, and the long schedules were pruned."""
    return round(100 * epoch / epochs)


class PruneListener(Listener):
    """`report(step, value) -> prune?` after every epoch with a validation accuracy, at the epoch's
    schedule_step. The last epoch is reported but never pruned: its run is complete, and its value
    the trial's."""

    def __init__(self, report: Callable[[int, float], bool]) -> None:
        self.report = report
        self.pruned_at: int | None = None
        self.last_value: float | None = None

    def on_epoch_end(self, event: EpochEvent) -> None:
        if event.val_accuracy is None:
            return
        self.last_value = event.val_accuracy
        if self.report(schedule_step(event.epoch, event.epochs), event.val_accuracy) and event.epoch < event.epochs:
            self.pruned_at = event.epoch
            self.stop_reason = PRUNED
