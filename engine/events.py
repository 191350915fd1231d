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
class NormChoice:
    """What a run did with its BatchNorm statistics (--adapt-norm) and why: adapted to the training
    images (AdaBN) or kept as loaded. With "auto" measured, the validation score of the head fitted
    on each set of features (engine/training/norm_choice.py) and what measuring cost."""

    setting: str  # auto | on | off
    adapted: bool  # the statistics the run trains and is checked with
    why: str  # "setting on", "auto: ...": why, when it was not measured
    pinned_score: float | None = None  # measured: the val score with the loaded statistics
    adapted_score: float | None = None  # ... and with the adapted ones
    seconds: float | None = None  # what measuring added: the AdaBN pass, the adapted trunk pass, two head fits
    score_name: str = "balanced accuracy"  # the task's: balanced accuracy, mAP or R²

    @property
    def measured(self) -> bool:
        return self.pinned_score is not None and self.adapted_score is not None

    @property
    def gain_points(self) -> float | None:
        """Adapted minus loaded, in points of the score (hundredths; None when not measured)."""
        return (self.adapted_score - self.pinned_score) * 100 if self.measured else None

    @property
    def line(self) -> str:
        """One line for the person: the CLI prints it, the window shows it, run.json keeps it."""
        state = "adapted to the training images (AdaBN)" if self.adapted else "not adapted (as loaded)"
        if not self.measured:
            return f"normalization statistics {state} ({self.why})"
        tie = ", a tie keeps them as loaded" if self.adapted_score == self.pinned_score else ""
        cost = f"; measuring took {self.seconds:.1f} s" if self.seconds is not None else ""
        shown = "{:.3f}" if self.score_name == "R²" else "{:.1%}"  # R² is no share of anything
        return (f"normalization statistics {state} (auto: val {self.score_name} "
                f"{shown.format(self.adapted_score)} adapted, {shown.format(self.pinned_score)} as loaded, "
                f"{self.gain_points:+.1f} points{tie}{cost})")

    def to_dict(self) -> dict:
        return {"setting": self.setting, "adapted": self.adapted, "why": self.why, "score": self.score_name,
                "pinned_score": self.pinned_score, "adapted_score": self.adapted_score,
                "gain_points": None if self.gain_points is None else round(self.gain_points, 2),
                "seconds": None if self.seconds is None else round(self.seconds, 3), "line": self.line}

    @classmethod
    def from_dict(cls, raw: object) -> NormChoice | None:
        """The choice `to_dict` wrote; None when it is none (a run from before, a damaged file)."""
        record = mapping(raw) or {}
        setting, adapted, why = text(record.get("setting")), record.get("adapted"), text(record.get("why"))
        if setting is None or not isinstance(adapted, bool):
            return None
        def score(which: str) -> float | None:  # runs from before tasks named it for balanced accuracy
            return number(record.get(f"{which}_score", record.get(f"{which}_balanced_accuracy")))

        return cls(setting, adapted, why or "", score("pinned"), score("adapted"), number(record.get("seconds")),
                   text(record.get("score")) or "balanced accuracy")


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
    norm_choice: NormChoice | None = None  # what the run did with its BatchNorm statistics

    def to_dict(self) -> dict:
        return {**asdict(self), "norm_choice": self.norm_choice.to_dict() if self.norm_choice else None}


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
