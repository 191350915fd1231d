"""Everything that watches or records a run is a listener; none of them changes training.

The epoch loop calls each hook on every listener, in the order it declares (EpochLoop._listeners).
A listener may read the model (the checkpoint writer must), may ask the loop to end after an epoch
(`stop_reason`), may raise to end a run that became unsound (freeze integrity), and keeps what a
resumed run needs in its own state_dict; it never alters weights, LRs, batches or random state.
Anchors: Lightning's Callback, Keras' Callback.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from engine.model.checkpoint import BackgroundSaver, make_checkpoint, snapshot
from engine.model.timm_source import checkpoint_source_fields
from engine.errors import TrainingDiverged, UserError
from engine.events import BatchEvent, Callbacks, EpochEvent, FitResult, RunStarted
from engine.listener import Listener, listener_states
from engine.plan.plan import Plan
from engine.runs.run_folder import RunFolder


def metrics_line(event: EpochEvent) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    line = {
        "epoch": event.epoch, "train_loss": event.train_loss, "train_accuracy": event.train_accuracy,
        "val_loss": event.val_loss, "val_accuracy": event.val_accuracy,
        "val_balanced_accuracy": event.val_balanced_accuracy, "seconds": round(event.seconds, 4),
        "images_per_second": round(event.images_per_second, 2), "data_seconds": round(event.data_seconds, 4),
        "compute_seconds": round(event.compute_seconds, 4), "lr": event.lr,
        "trainable_params": event.trainable_params, "per_class_accuracy": event.per_class_accuracy,
        "confusion_matrix": event.confusion_matrix, "newly_unfrozen": list(event.newly_unfrozen),
        "is_best": event.is_best,
    }
    if event.task != "single-label":  # its headline metrics, beside the loss (accuracy fields stay null)
        line["task"] = event.task
        line.update({f"val_{name}": value for name, value in event.val_metrics.items()})
    if event.integrity is not None:
        line["integrity"] = {"checked": event.integrity.checked, "changed": list(event.integrity.changed)}
    if event.layers:
        line["layers"] = {name: {"grad_norm": s.grad_norm, "update_ratio": s.update_ratio,
                                 "zero_grad_fraction": s.zero_grad_fraction} for name, s in event.layers.items()}
    return line


class CallbackRelay(Listener):
    """Passes the events on to the caller's Callbacks (the window's worker, the CLI's printer)."""

    def __init__(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def on_fit_start(self, started: RunStarted) -> None:
        self.callbacks.on_run_started(started)

    def on_batch_end(self, event: BatchEvent) -> None:
        self.callbacks.on_batch_end(event)

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.callbacks.on_epoch_end(event)


class MetricsLog(Listener):
    """metrics.jsonl: one fsynced line per epoch, so a crash loses at most the epoch in progress."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.folder.append_metrics(metrics_line(event))


class RunOutcome(Listener):
    """run.json's outcome: the status ("running", then "finished", "stopped" or "failed"), the
    integrity verdict after every epoch, the result at the end. A killed process leaves "running";
    readers tell it from a live run by RunFolder.in_use(). With each_epoch=False (a search trial,
    which nobody continues or watches from its run.json) the last verdict is written with the
    outcome instead: metrics.jsonl still holds every epoch's."""

    def __init__(self, folder: RunFolder, each_epoch: bool = True) -> None:
        self.folder, self.each_epoch = folder, each_epoch
        self.unwritten: dict[str, Any] = {}  # the verdict each_epoch=False holds until the end

    def on_fit_start(self, started: RunStarted) -> None:
        self.folder.update_record(status="running")

    def on_fit_failed(self, error: Exception) -> None:
        record_failure(self.folder, error, **self.unwritten)

    def on_epoch_end(self, event: EpochEvent) -> None:
        report = event.integrity
        if report is None:
            return
        verdict = {"integrity": {"verdict": "unchanged" if report.intact else "changed", "checked": report.checked,
                                 "changed": list(report.changed), "last_checked_epoch": report.epoch}}
        if self.each_epoch:
            self.folder.update_record(**verdict)
        else:
            self.unwritten = verdict

    def on_fit_end(self, result: FitResult) -> None:
        status = "finished" if result.stopped == "completed" else "stopped"  # by the person or early stopping
        self.folder.update_record(result=result.summary(), status=status, **self.unwritten)


def record_failure(folder: RunFolder, error: Exception, **fields: Any) -> None:
    """run.json says "failed" and why (with `fields`). Best effort: the error being raised matters
    more than this note, so a folder that cannot be written now does not replace it."""
    if not folder.exists():
        return
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    try:
        folder.update_record(status="failed", error=reason, **fields)
    except (OSError, UserError):
        pass


class BestCheckpoint(Listener):
    """checkpoint.pt: the weights of the best epoch so far, written in the background."""

    def __init__(self, folder: RunFolder, saver: BackgroundSaver, model: nn.Module, *, arch: str,
                 class_names, preprocessing: dict, config: dict,
                 extras: Callable[[], dict] | None = None) -> None:
        self.folder, self.saver, self.model = folder, saver, model
        self.extras = extras or dict  # more fields of the checkpoint, as of the epoch saved (its calibration)
        self.arch, self.class_names, self.preprocessing, self.config = arch, class_names, preprocessing, config
        self.plan_in_force: Plan | None = None
        # What it wrote is on disk, not in resume.pt: a new run's folder holds no checkpoint (refused
        # otherwise), a resumed run keeps the one it has.
        self.written = folder.has_checkpoint()

    @property
    def path(self) -> str | None:
        return str(self.folder.checkpoint_path) if self.written else None

    def on_epoch_start(self, epoch: int, plan: Plan) -> None:
        self.plan_in_force = plan

    def on_epoch_end(self, event: EpochEvent) -> None:
        if not event.is_best:
            return
        kept = f"; the last good checkpoint is kept at {self.path}" if self.path else "; no checkpoint was saved"
        broken = non_finite_tensors(self.model)
        if broken:
            raise TrainingDiverged(f"{len(broken)} weight tensor(s) became NaN or infinite in epoch {event.epoch} "
                                   f"(first: {broken[0]}; try a lower LR){kept}")
        if not outputs_are_finite(self.model, self.preprocessing["crop"]):
            raise TrainingDiverged(f"the model's outputs became NaN or infinite in epoch {event.epoch} although its "
                                   f"weights are finite (try a lower LR){kept}")
        checkpoint = make_checkpoint(
            self.model, arch=self.arch, class_names=self.class_names, preprocessing=self.preprocessing,
            plan=self.plan_in_force.to_dict(), metrics=metrics_line(event), epoch=event.epoch,
            config=self.config)
        checkpoint.update(checkpoint_source_fields(self.arch, self.config))
        self.saver.save({**checkpoint, **self.extras()}, self.folder.checkpoint_path)
        self.written = True


@torch.no_grad()
def outputs_are_finite(model: nn.Module, image_size: int) -> bool:
    """Whether the model, as it would be saved (eval mode), gives finite outputs on a probe batch.
    Finite weights can still overflow: batch statistics in train mode hid eval-mode running
    statistics that blow up, and without a validation set nothing else would see it."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return True
    modes = {module: module.training for module in model.modules()}
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        model.eval()
        outputs = model(probe.to(parameter.device))
    finally:
        for module, training in modes.items():  # exactly as before: frozen norm layers stay pinned
            module.training = training
    return bool(torch.isfinite(outputs.float()).all())


def non_finite_tensors(model: nn.Module) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity. Each tensor's smallest and
    largest value tell (a NaN makes both NaN, an infinity is one of them): one read of it, no mask as
    large as it, and one look at the answers for the whole model."""
    named = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point() and t.numel()]
    if not named:
        return []
    ends = torch.stack([torch.stack(torch.aminmax(t.detach())).float() for _, t in named])
    finite = torch.isfinite(ends).all(dim=1).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


class ResumeState(Listener):
    """resume.pt: after every epoch, everything needed to continue exactly as if never stopped: the
    loop's own state (`capture`) and every listener's (`listeners`, called after the others' epoch
    end, so their states are this epoch's)."""

    def __init__(self, folder: RunFolder, saver: BackgroundSaver, capture: Callable[[], dict],
                 listeners: Callable[[], list[Listener]]) -> None:
        self.folder, self.saver, self.capture, self.listeners = folder, saver, capture, listeners

    def on_epoch_end(self, event: EpochEvent) -> None:
        payload = self.folder.resume_payload(self.capture(), listener_states(self.listeners()))
        self.saver.save(snapshot(payload), self.folder.resume_path)


class EarlyStopping(Listener):
    """Ends the run after `patience` epochs in a row without a new best. "Best" is the loop's
    verdict (event.is_best, which also writes the checkpoint; its best score is the loop's state in
    resume.pt), so only the count is this listener's, and a resumed run carries it on."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.epochs_since_best = 0

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.epochs_since_best = 0 if event.is_best else self.epochs_since_best + 1
        if self.epochs_since_best >= self.patience:
            self.stop_reason = "early-stopping"

    def state_dict(self) -> dict:
        return {"epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_since_best = int(state["epochs_since_best"])
