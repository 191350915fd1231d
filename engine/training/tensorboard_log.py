"""The TensorBoardLog listener: RUN/tensorboard/, for `tensorboard --logdir RUN` (or a runs folder).

Per epoch the figures engine.training.scalars names (metrics.jsonl's values, step = epoch: for
multi-label `mAP/val`, `macro_f1/val`, `micro_f1/val`, for regression `mae/val`, `rmse/val`, `r2/val`);
at each new best epoch of a single-label run the confusion matrix as an image; at the end the best epoch's validation features
with thumbnails for the projector; at the start the run's configuration as hparams. Written with
tensorboardX's protocol buffers alone (engine.training.tensorboard_files): no TensorFlow, no
network. Rank 0 alone writes it, as every file of the run folder.

Logging is a courtesy, never a reason to lose a run: the first failure (a missing tensorboardX, a
full disk) is one warning line, and the run goes on without TensorBoard. A continued run appends a
new event file; its first epoch purges what a killed process logged past its resume state.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from engine.events import EpochEvent, FitResult, RunStarted
from engine.listener import Listener
from engine.plan.plan import Plan
from engine.runs.predictions import relative_path
from engine.runs.run_folder import RunFolder
from engine.training.scalars import config_values, epoch_scalars
from engine.training.validation_records import ValidationOutputs

log = logging.getLogger("transfer_studio")

PROJECTOR_POINTS = 500  # at most this many validation images in the projector: thumbnails are decoded at the end
# The figures hparams compares runs by: the task's headline figures and the validation loss.
HPARAM_METRICS = {"single-label": ("accuracy/val", "balanced_accuracy/val", "loss/val"),
                  "multi-label": ("mAP/val", "macro_f1/val", "loss/val"),
                  "regression": ("r2/val", "mae/val", "loss/val")}


class TensorBoardLog(Listener):
    def __init__(self, folder: RunFolder, config: dict, class_names: Sequence[str], data_root: str,
                 latest: Callable[[], ValidationOutputs | None], task=None) -> None:
        """`task`: the run's engine.training.tasks object (None: single-label); the projector's labels
        and the hparams figures follow it."""
        self.logdir = folder.tensorboard_path
        self.config, self.class_names, self.data_root, self.latest = config, list(class_names), data_root, latest
        self.task = task
        self.task_name = task.name if task is not None else "single-label"
        self.events = None  # the EventFile, once open
        self.failed = False  # the first failure turns TensorBoard off for the rest of the run
        self.first_epoch: int | None = None
        self.best = None  # ProjectorPoints of the best epoch this process saw

    # --- the hooks: each one guarded ------------------------------------------------------------

    def on_fit_start(self, started: RunStarted) -> None:
        self._guarded(self._open)

    def on_epoch_start(self, epoch: int, plan: Plan) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch > 1 and self.events is not None:  # continued: what a killed process logged from here is replaced
                self._guarded(self.events.purge_from, epoch)

    def on_epoch_end(self, event: EpochEvent) -> None:
        if self.events is not None:
            self._guarded(self._epoch, event)

    def on_fit_end(self, result: FitResult) -> None:
        if self.events is not None:
            self._guarded(self._finish)

    def on_fit_failed(self, error: Exception) -> None:
        if self.events is not None:
            self._guarded(self._close)

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        if self.failed:
            return
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of logging, said once; the run matters more
            self.failed = True
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if isinstance(exc, ImportError):
                reason = f"{reason} (pip install tensorboardX)"
            log.warning(f"transfer-studio: warning: TensorBoard logging stopped ({reason}); the run goes on, "
                        f"{self.logdir} keeps what was written before")
            self._close_quietly()

    # --- what is written --------------------------------------------------------------------------

    def _open(self) -> None:
        from tensorboardX.summary import hparams

        from engine.training.tensorboard_files import EventFile

        self.events = EventFile(self.logdir)
        experiment, session_start, _ = hparams(config_values(self.config),
                                               {name: 0.0 for name in HPARAM_METRICS[self.task_name]})
        self.events.summary(experiment, 0)
        self.events.summary(session_start, 0)
        self.events.flush()

    def _epoch(self, event: EpochEvent) -> None:
        from engine.training.tensorboard_files import confusion_image

        self.events.scalars(epoch_scalars(event), event.epoch)
        # A confusion matrix is single-label's: other tasks have their figures as scalars only.
        if event.is_best and event.task == "single-label" and event.val_accuracy is not None:
            self.events.image("confusion_matrix/val", confusion_image(event.confusion_matrix, self.class_names),
                              event.epoch)
        if event.is_best:
            self.best = self._projector_points(event.epoch, self.latest())
        self.events.flush()

    def _finish(self) -> None:
        from tensorboardX.summary import hparams

        from engine.training.tensorboard_files import write_projector

        if self.best is not None:
            write_projector(self.logdir, self.best)
        _, _, session_end = hparams({}, {})
        self.events.summary(session_end, 0)
        self._close()

    def _close(self) -> None:
        events, self.events = self.events, None
        if events is not None:
            events.flush()
            events.close()

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - already failing; the warning has been given
            self.events = None

    def _projector_points(self, epoch: int, outputs: ValidationOutputs | None):
        """The best epoch's features, a spread-out subset moved to the CPU now (the device's copy
        is replaced by the next validation pass); None when the run has none to show."""
        from engine.training.tensorboard_files import ProjectorPoints

        if outputs is None or outputs.features is None or outputs.samples is None or len(outputs.samples) < 3:
            return None
        n = len(outputs.samples)
        keep = torch.linspace(0, n - 1, min(n, PROJECTOR_POINTS)).round().long().unique()
        features = outputs.features[keep.to(outputs.features.device)].float().cpu().numpy()
        labels = outputs.labels[keep.to(outputs.labels.device)].cpu()
        logits = outputs.logits[keep.to(outputs.logits.device)].float().cpu()
        true, pred = projector_labels(self.task_name, self.class_names, labels, logits, self.task)
        samples = [outputs.samples[i] for i in keep.tolist()]
        return ProjectorPoints(
            epoch=epoch, features=features, true=true, pred=pred, paths=tuple(s.path for s in samples),
            shown_paths=tuple(relative_path(s.path, self.data_root) for s in samples))


def projector_labels(task_name: str, class_names: Sequence[str], labels: torch.Tensor, logits: torch.Tensor,
                     task=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The projector's true and predicted column for each point: a class; the labels present
    ("a+b", "(none)"; predicted: sigmoid at 0.5); a value (predicted on the target's own scale)."""
    def label_set(row) -> str:
        return "+".join(name for name, on in zip(class_names, row) if on) or "(none)"

    if task_name == "multi-label":
        return (tuple(label_set(row) for row in (labels > 0.5).tolist()),
                tuple(label_set(row) for row in (logits > 0).tolist()))
    if task_name == "regression":
        values = task.values(logits) if task is not None else logits[:, 0]
        return tuple(f"{v:.4g}" for v in labels.tolist()), tuple(f"{v:.4g}" for v in values.tolist())
    return (tuple(class_names[i] for i in labels.tolist()),
            tuple(class_names[i] for i in logits.argmax(1).tolist()))

