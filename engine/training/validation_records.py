"""The ValidationRecords listener: the best epoch's validation pass kept as val_predictions.csv and
its embeddings map; nothing is predicted twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from engine.data.dataset import Sample
from engine.errors import RunFailed
from engine.events import EpochEvent
from engine.listener import Listener
from engine.runs.embeddings import MIN_POINTS, project_2d, write_embeddings
from engine.runs.predictions import prediction_records, relative_path, write_predictions
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import write_val_outputs


@dataclass(frozen=True)
class ValidationOutputs:
    """One validation pass, as the epoch loop saw it; tensors stay on the run's device."""

    samples: tuple[Sample, ...] | None  # the images in row order; None when that order is not known for sure
    labels: torch.Tensor  # (N,)
    logits: torch.Tensor  # (N, K) float
    features: torch.Tensor | None  # (N, D): the head's input; None when it could not be captured


class ValidationRecords(Listener):
    """At every new best epoch: val_predictions.csv and embeddings.csv from the validation pass the
    loop just did (`latest()`); files of an earlier best that cannot be replaced are removed, so what
    is on disk always belongs to the best checkpoint."""

    def __init__(self, folder: RunFolder, class_names: Sequence[str], data_root: str,
                 latest: Callable[[], ValidationOutputs | None]) -> None:
        self.folder, self.class_names, self.data_root, self.latest = folder, list(class_names), data_root, latest

    def on_epoch_end(self, event: EpochEvent) -> None:
        if not event.is_best:
            return
        try:
            self._write(self.latest(), event)
        except OSError as exc:  # a full or read-only disk ends the run as the checkpoint's would
            raise RunFailed(f"could not save {exc.filename or 'the validation records'}: {exc.strerror or exc}; "
                            f"the run is stopped and the last files written completely are kept") from None

    def _write(self, outputs: ValidationOutputs | None, event: EpochEvent) -> None:
        if outputs is None or outputs.samples is None:
            self.folder.predictions_path.unlink(missing_ok=True)
            self.folder.embeddings_path.unlink(missing_ok=True)
            return
        paths = [relative_path(s.path, self.data_root) for s in outputs.samples]
        records = prediction_records(paths, outputs.labels, outputs.logits, self.class_names)
        write_predictions(self.folder.predictions_path, records)
        written = False
        coords = project_2d(outputs.features) if outputs.features is not None and len(records) >= MIN_POINTS else None
        if coords is not None:
            written = write_embeddings(self.folder.embeddings_path, paths, [r.true for r in records],
                                       [r.pred for r in records], coords)
        if not written:
            self.folder.embeddings_path.unlink(missing_ok=True)


class TaskValidationRecord(ValidationRecords):
    """Multi-label and regression: at every new best epoch, val_outputs.pt (outputs, targets, paths
    and the task fields the checkpoint carries) replaces the last; evaluate reads it back."""

    def _write(self, outputs: ValidationOutputs | None, event: EpochEvent) -> None:
        path = self.folder.val_outputs_path
        if outputs is None or not len(outputs.labels):
            path.unlink(missing_ok=True)
            return
        paths = [relative_path(s.path, self.data_root) for s in outputs.samples] if outputs.samples else []
        write_val_outputs(path, event.epoch, event.task, self.class_names, paths, outputs.labels, outputs.logits, {})
