"""What a run folder's two JSON files say, as typed records: the one way anything reads them.

`EpochRecord` is one line of metrics.jsonl (engine.training.listeners.metrics_line writes it),
`RunRecord` is run.json (engine.training.setup.Run.record, then the listeners' outcome). Run
folders may be damaged or edited by hand: a field of the wrong type reads as missing (None, or
empty), never as a traceback. `raw` keeps what the file said, for the few that copy it verbatim.
RunFolder.read_epochs() and RunFolder.read_run() give them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.events import FitResult, IntegrityReport, LayerStats, NormChoice
from engine.json_values import flag, integer, mapping, number, numbers_by_name, objects, text, texts
from engine.task_figures import TASK_METRICS
from engine.runs.run_name import recorded_name

STARTED_FORMAT = "%Y-%m-%dT%H:%M:%S"  # run.json's "started": local time, to the second


def started_now() -> str:
    """The moment a run starts, as run.json records it."""
    return time.strftime(STARTED_FORMAT)


@dataclass(frozen=True)
class EpochRecord:
    """One metrics.jsonl line: an epoch's losses, accuracies, LRs, integrity check and telemetry."""

    epoch: int  # 1-based
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None  # None: no validation images
    val_accuracy: float | None = None
    val_balanced_accuracy: float | None = None
    seconds: float | None = None
    images_per_second: float | None = None
    data_seconds: float | None = None
    compute_seconds: float | None = None
    lr: dict[str, float] = field(default_factory=dict)  # group label -> LR at the epoch's end
    trainable_params: int | None = None
    per_class_accuracy: dict[str, float | None] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)  # rows: true class, columns: predicted
    newly_unfrozen: tuple[str, ...] = ()
    is_best: bool = False
    integrity: IntegrityReport | None = None  # the freeze check after this epoch
    layers: dict[str, LayerStats] = field(default_factory=dict)  # telemetry: the epoch's mean per module
    task: str = "single-label"  # a line without "task" is single-label, as every older one is
    val_metrics: dict[str, float | None] = field(default_factory=dict)  # the task's val_<name> figures
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, raw: Any) -> EpochRecord | None:
        """The line's record; None when it is no epoch line at all (not an object, no epoch number)."""
        line = mapping(raw)
        epoch = integer(line.get("epoch")) if line is not None else None
        if epoch is None:
            return None
        numbers = {key: number(line.get(key)) for key in (
            "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "seconds",
            "images_per_second", "data_seconds", "compute_seconds")}
        return cls(epoch=epoch, **numbers, lr=numbers_by_name(line.get("lr")) or {},
                   trainable_params=integer(line.get("trainable_params")),
                   per_class_accuracy=numbers_by_name(line.get("per_class_accuracy"), allow_null=True) or {},
                   confusion_matrix=_counts_table(line.get("confusion_matrix")),
                   newly_unfrozen=texts(line.get("newly_unfrozen")) or (), is_best=flag(line.get("is_best")) or False,
                   integrity=_epoch_integrity(line.get("integrity"), epoch), layers=_layers(line.get("layers")),
                   **_task_fields(line), raw=line)


@dataclass(frozen=True)
class RunRecord:
    """run.json: how the run was set up (configuration, plan, classes, preprocessing, environment),
    when it started, and its outcome so far (status, integrity verdict, result)."""

    config: dict[str, Any]  # RunConfig.to_dict() as written; RunFolder.load_config() checks it whole
    name: str | None = None  # the name the person gave the run (engine.runs.run_name); None: its folder's
    arch: str | None = None  # config.model.arch
    strategy: str | None = None  # config.plan.strategy
    epochs_planned: int | None = None  # config.train.epochs
    data_root: str | None = None  # the dataset scanned (dataset.root), else config.data.root
    class_names: tuple[str, ...] | None = None
    plan: dict[str, Any] | None = None  # the resolved plan (Plan.to_dict())
    dataset: dict[str, Any] | None = None  # the scan's summary: counts, warnings, skipped files
    preprocessing: dict[str, Any] | None = None  # Preprocessing.to_dict()
    device: str | None = None
    precision: str | None = None
    feature_cache: str | None = None  # why features were or were not cached
    norm_choice: NormChoice | None = None  # "norm_statistics": BatchNorm statistics adapted or kept, and why
    transfer_studio: str | None = None  # the versions that trained it
    torch: str | None = None
    started: str | None = None  # STARTED_FORMAT, local time; a continued run keeps its first start
    status: str | None = None  # "running", "finished", "stopped", "failed" (None: a folder from before statuses)
    error: str | None = None  # why it failed
    integrity: IntegrityReport | None = None  # the verdict after the last checked epoch
    processes: int = 1  # how many processes trained it
    rank_integrity: tuple[dict[str, Any], ...] = ()  # with several: each rank's {rank, checked, changed, digest}
    result: FitResult | None = None  # the outcome at the end
    calibration: RecordedCalibration | None = None  # the best epoch's (single-label runs)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, raw: Any) -> RunRecord:
        record = mapping(raw) or {}
        config = mapping(record.get("config")) or {}
        section = {key: mapping(config.get(key)) or {} for key in ("model", "plan", "train", "data")}
        dataset = mapping(record.get("dataset"))
        processes = record.get("processes")  # a count, then {world_size, integrity} once an epoch ended
        return cls(
            config=config, name=recorded_name(record.get("name")), arch=text(section["model"].get("arch")),
            strategy=text(section["plan"].get("strategy")),
            epochs_planned=integer(section["train"].get("epochs")),
            data_root=text((dataset or {}).get("root")) or text(section["data"].get("root")),
            class_names=texts(record.get("class_names")), plan=mapping(record.get("plan")), dataset=dataset,
            preprocessing=mapping(record.get("preprocessing")),
            **{key: text(record.get(key)) for key in ("device", "precision", "feature_cache", "transfer_studio",
                                                        "torch", "status", "error")},
            norm_choice=NormChoice.from_dict(record.get("norm_statistics")),
            started=_started(record.get("started")), integrity=_run_integrity(record.get("integrity")),
            processes=integer(processes) or integer((mapping(processes) or {}).get("world_size")) or 1,
            rank_integrity=tuple(objects((mapping(processes) or {}).get("integrity"))),
            result=_result(record.get("result")), calibration=RecordedCalibration.from_dict(record.get("calibration")),
            raw=record)


@dataclass(frozen=True)
class RecordedCalibration:
    """run.json's "calibration" (engine.training.calibration_record writes it from
    engine.model.calibration.calibrate): the temperature fitted on the best epoch's validation
    logits, NLL and ECE before and after, and the unknown rule."""

    temperature: float
    epoch: int | None = None
    images: int | None = None
    ece_bins: int | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    unknown: dict[str, Any] | None = None  # {"score", "threshold", "keep", "validation_kept", "error_auroc"}

    @classmethod
    def from_dict(cls, raw: Any) -> RecordedCalibration | None:
        """None when there is none (a multi-label or regression run, or one from before calibration)."""
        found = mapping(raw) or {}
        temperature = number(found.get("temperature"))
        if temperature is None or not 0 < temperature < float("inf"):  # NaN too: no temperature to apply
            return None
        return cls(temperature, integer(found.get("epoch")), integer(found.get("images")),
                   integer(found.get("ece_bins")),
                   **{key: number(found.get(key)) for key in ("ece_before", "ece_after", "nll_before", "nll_after")},
                   unknown=mapping(found.get("unknown")))


def _task_fields(line: dict[str, Any]) -> dict[str, Any]:
    """A line's task and its val_<name> figures (an unknown task reads as single-label: no figures)."""
    task = text(line.get("task"))
    if task not in TASK_METRICS:
        return {}
    return {"task": task, "val_metrics": {name: number(line.get(f"val_{name}")) for name in TASK_METRICS[task]}}


def _started(value: Any) -> str | None:
    stamp = text(value)
    if stamp is None:
        return None
    try:
        time.strptime(stamp, STARTED_FORMAT)
    except ValueError:
        return None  # not a moment: read as missing
    return stamp


def _result(value: Any) -> FitResult | None:
    if value is None:
        return None
    try:
        return FitResult.from_summary(value)
    except ValueError:
        return None  # not a result: read as missing


def _run_integrity(value: Any) -> IntegrityReport | None:
    """run.json's verdict: {verdict, checked, changed, last_checked_epoch}."""
    report = mapping(value) or {}
    return _integrity(report, integer(report.get("last_checked_epoch")))


def _epoch_integrity(value: Any, epoch: int) -> IntegrityReport | None:
    """A metrics line's check: {checked, changed}, of the line's own epoch."""
    return _integrity(mapping(value) or {}, epoch)


def _integrity(report: dict[str, Any], epoch: int | None) -> IntegrityReport | None:
    checked, changed = integer(report.get("checked")), texts(report.get("changed"))
    if epoch is None or checked is None or changed is None:
        return None
    return IntegrityReport(epoch=epoch, checked=checked, changed=changed)


def _layers(value: Any) -> dict[str, LayerStats]:
    """Telemetry per module; a module whose statistics are not all numbers is left out."""
    layers = {}
    for name, stats in (mapping(value) or {}).items():
        numbers = [number((mapping(stats) or {}).get(key))
                   for key in ("grad_norm", "update_ratio", "zero_grad_fraction")]
        if None not in numbers:
            layers[name] = LayerStats(*numbers)
    return layers


def _counts_table(value: Any) -> list[list[int]]:
    """A confusion matrix: a list of rows of counts; [] when any entry is not one."""
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        return []
    if any(integer(count) is None for row in value for count in row):
        return []
    return [list(row) for row in value]
