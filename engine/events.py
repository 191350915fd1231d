"""What the trainer tells the outside world, and how the outside world steers it.

Events are frozen dataclasses of plain values, so they cross threads (the window's worker) and
processes (a future torchrun rank 0) unchanged. Control is a pair of threading.Events the
trainer polls at every batch: pause, resume and stop take effect within one batch.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field

from engine.json_values import integer, mapping, number, objects, text, texts


@dataclass(frozen=True)
class LayerStats:
    """Telemetry of one module (the tree's first two levels) on a sampled optimizer step."""

    grad_norm: float  # L2 norm of the module's gradients (unscaled under fp16 loss scaling)
    update_ratio: float  # ||theta_after - theta_before|| / ||theta_before||; exactly 0 when frozen
    zero_grad_fraction: float  # share of the module's parameters whose gradient is exactly zero


@dataclass(frozen=True)
class IntegrityReport:
    """Proof that what the plan froze is still exactly what was loaded, checked after an epoch."""

    epoch: int
    checked: int  # tensors fingerprinted (frozen parameters and buffers)
    changed: tuple[str, ...] = ()  # state-dict names of the tensors that differ, bit for bit

    @property
    def intact(self) -> bool:
        return not self.changed


@dataclass(frozen=True)
class BatchEvent:
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    global_step: int
    total_steps: int
    loss: float  # mean over the batches since the previous event
    lrs: dict[str, float]  # group label -> LR
    images_per_second: float
    eta_seconds: float
    layers: dict[str, LayerStats] = field(default_factory=dict)  # the latest telemetry sample, if any new

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float | None  # None for regression
    val_loss: float | None
    val_accuracy: float | None
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted
    seconds: float
    images_per_second: float
    data_seconds: float  # waiting for the loader
    compute_seconds: float
    lr: dict[str, float]
    trainable_params: int
    is_best: bool
    newly_unfrozen: tuple[str, ...] = ()
    skipped_files: int = 0
    feature_cache: bool = False
    integrity: IntegrityReport | None = None
    layers: dict[str, LayerStats] = field(default_factory=dict)  # mean over the epoch's samples
    val_balanced_accuracy: float | None = None  # mean recall over the classes with validation images
    task: str = "single-label"  # multi-label and regression: train_accuracy is per label decision / None,
    val_metrics: dict = field(default_factory=dict)  # and these hold mAP, macro/micro F1 or MAE, RMSE, R²

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunStarted:
    run_dir: str
    device: str
    device_name: str
    precision: str
    class_names: tuple[str, ...]
    train_images: int
    val_images: int
    trainable_params: int
    total_params: int
    feature_cache: str  # why features are or are not cached, for the person
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class FitResult:
    run_dir: str
    checkpoint: str | None
    best_epoch: int | None
    best_val_accuracy: float | None
    epochs_run: int
    seconds: float
    images_per_second: float
    stopped: str  # "completed" | "early-stopping" | "user"
    skipped: tuple[SkippedFile, ...] = field(default_factory=tuple)
    integrity: IntegrityReport | None = None  # the last check; None when no epoch ran
    task: str = "single-label"
    best_val_metrics: dict | None = None  # multi-label or regression: the best epoch's validation metrics

    def summary(self) -> dict:
        task = {} if self.task == "single-label" else {"task": self.task, "best_val_metrics": self.best_val_metrics}
        return {**task, 
            "run_dir": self.run_dir, "checkpoint": self.checkpoint, "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy, "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
            "stopped": self.stopped,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "integrity": None if self.integrity is None else {
                "checked": self.integrity.checked, "changed": list(self.integrity.changed),
                "last_checked_epoch": self.integrity.epoch},
        }

    @classmethod
    def from_summary(cls, raw: object) -> FitResult:
        """The FitResult `summary()` wrote (its inverse, up to its rounding): the one way run.json's
        "result" and an event line's are read back. A field of the wrong type reads as missing;
        ValueError when a field every result has is missing, as `raw` is then no summary."""
        summary = mapping(raw) or {}
        values = {key: read(summary.get(key)) for key, read in (
            ("run_dir", text), ("epochs_run", integer), ("seconds", number), ("images_per_second", number),
            ("stopped", text), ("checkpoint", text), ("best_epoch", integer), ("best_val_accuracy", number))}
        missing = [key for key in ("run_dir", "epochs_run", "seconds", "images_per_second", "stopped")
                   if values[key] is None]
        if missing:
            raise ValueError(f"not a run result: {', '.join(missing)} missing or of the wrong type")
        skipped = tuple(SkippedFile(s["path"], s["reason"]) for s in objects(summary.get("skipped"))
                        if text(s.get("path")) is not None and text(s.get("reason")) is not None)
        integrity = mapping(summary.get("integrity")) or {}
        checked, changed, epoch = (integer(integrity.get("checked")), texts(integrity.get("changed")),
                                   integer(integrity.get("last_checked_epoch")))
        return cls(**values, skipped=skipped,
                   integrity=None if None in (checked, changed, epoch) else IntegrityReport(epoch, checked, changed),
                   task=text(summary.get("task")) or "single-label", best_val_metrics=mapping(summary.get("best_val_metrics")))


class Callbacks:
    """Override what you need; every method is called on the training thread."""

    def on_run_started(self, event: RunStarted) -> None: ...

    def on_status(self, text: str, done: int = 0, total: int = 0) -> None: ...

    def on_batch_end(self, event: BatchEvent) -> None: ...

    def on_epoch_end(self, event: EpochEvent) -> None: ...


def format_duration(seconds: float) -> str:
    """ETA text: "07:42" or "1:07:42"."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TrainingControl:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused run must wake up to notice the stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self) -> None:
        while not self._running.wait(timeout=0.1):
            pass

    def check_step(self, step: int, steps: int) -> bool:
        """Called before each training step (1-based, of `steps`): waits while paused; True: stop now."""
        self.wait_while_paused()
        return self.stop_requested
