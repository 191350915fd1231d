"""A search trial's run: the same training and the same proofs as `train`, fewer files, nothing built twice.

fit(config, trial=SearchTrial(parts)) trains exactly as `train` with the same settings (the best
trial's flags reproduce it) and keeps every proof a run gives: each epoch's metrics line and
freeze-integrity verdict, the NaN checks, calibration, checkpoint (with its weights hash), validation
predictions and embeddings of the kept epoch. What differs:
- the best epoch's records are written once, when the run ends, not at every new best epoch
  (BestRecordsAtEnd): a trial's best moves often in its first epochs, and each move cost a checkpoint;
- no resume.pt: a trial that stops is failed and drawn again by the search, never continued;
- a trial whose run folder the search deletes once it ends (pruned, without --keep-runs) writes no
  best-epoch records at all (`records_skipped_when`);
- the model, the cached features and the freeze proof's reference come from `parts`, shared by the
  trials of the search (engine.training.shared_parts).
TensorBoard and telemetry are the config's own settings; a search turns both off unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from engine.events import EpochEvent, FitResult, RunStarted
from engine.listener import Listener
from engine.plan.plan import Plan
from engine.training.shared_parts import SharedParts
from engine.training.validation_records import ValidationOutputs


@dataclass(frozen=True)
class SearchTrial:
    parts: SharedParts
    records_skipped_when: tuple[str, ...] = ()  # stop reasons (FitResult.stopped) whose folder is deleted


@dataclass(frozen=True)
class _BestEpoch:
    event: EpochEvent
    plan: Plan
    validation: ValidationOutputs | None
    trained: dict[str, torch.Tensor]  # every tensor the plan does not keep frozen, as the epoch left it


class BestRecordsAtEnd(Listener):
    """Holds the listeners that write at each new best epoch (calibration, checkpoint, validation
    records) and gives them the best epoch once, at the end (`write`). At each new best it keeps what
    they read: the epoch's event and plan, its validation pass and the tensors that train (the frozen
    ones are proven unchanged every epoch); `write` puts those back and replays the epoch to them,
    so they save what they would have saved at that epoch."""

    def __init__(self, records: Sequence[Listener], model: nn.Module, frozen_names: Callable[[], set[str]],
                 latest: Callable[[], ValidationOutputs | None], show: Callable[[ValidationOutputs | None], None],
                 skipped_when: tuple[str, ...] = ()) -> None:
        self.records, self.model, self.frozen_names = list(records), model, frozen_names
        self.latest, self.show, self.skipped_when = latest, show, skipped_when
        self.plan: Plan | None = None
        self.best: _BestEpoch | None = None

    def on_fit_start(self, started: RunStarted) -> None:
        for record in self.records:
            record.on_fit_start(started)

    def on_epoch_start(self, epoch: int, plan: Plan) -> None:
        self.plan = plan

    def on_epoch_end(self, event: EpochEvent) -> None:
        if not event.is_best:
            return
        frozen = self.frozen_names()
        trained = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()
                   if name not in frozen}
        self.best = _BestEpoch(event, self.plan, self.latest(), trained)

    def write(self, stopped: str) -> None:
        """The best epoch's records, unless the run ended as one whose folder is deleted (`stopped`)."""
        if self.best is None or stopped in self.skipped_when:
            return
        best, last = self.best, self.latest()
        self.model.load_state_dict(best.trained, strict=False)
        self.show(best.validation)
        try:
            for record in self.records:
                record.on_epoch_start(best.event.epoch, best.plan)
                record.on_epoch_end(best.event)
        finally:
            self.show(last)  # what later readers (TensorBoard's projector) expect: the last pass

    def on_fit_end(self, result: FitResult) -> None:
        for record in self.records:
            record.on_fit_end(result)

    def on_fit_failed(self, error: Exception) -> None:
        for record in self.records:
            record.on_fit_failed(error)
