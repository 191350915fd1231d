"""K-fold cross-validation of a training configuration: how much its validation accuracy depends on
which images happen to be held out, which a single small split cannot say.

Every image is held out exactly once: the dataset (a given train/val split pooled) is dealt into K
stratified, seeded folds (engine.data.dataset.fold_of), and the configuration is trained K times by the
trainer itself, each time validated on one fold, each run in its own folder `OUT/fold-k`. With a
frozen trunk the features come from the per-file store, so the trunk runs over the images once, in
the first fold, and every later fold trains only the head: seconds. (--adapt-norm auto is measured
on the first fold and its choice kept for the others; adapted statistics are adapted per fold.) The fold's accuracy is the one
after its last epoch (no epoch picked by the images it is scored on); the mean and the sample
standard deviation over the folds are written to `OUT/folds.json`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from engine.atomic import atomic_write_bytes
from engine.config import RunConfig
from engine.data.dataset import DatasetScan, scan_dataset
from engine.errors import UserError
from engine.events import Callbacks, TrainingControl
from engine.runs.run_folder import RunFolder
from engine.data.dataset import fold_of
from engine.training.trainer import fit

FOLDS_FILE = "folds.json"


@dataclass(frozen=True)
class FoldResult:
    fold: int  # 1-based
    train_images: int
    val_images: int
    val_accuracy: float | None  # after the last epoch
    best_val_accuracy: float | None  # the checkpoint's epoch (chosen on this fold: optimistic)
    run_dir: str

    def to_json(self) -> dict:
        return {"fold": self.fold, "train_images": self.train_images, "val_images": self.val_images,
                "val_accuracy": self.val_accuracy, "best_val_accuracy": self.best_val_accuracy,
                "run_dir": self.run_dir}


@dataclass(frozen=True)
class CrossValidation:
    folds: tuple[FoldResult, ...]
    wanted: int  # K asked for; fewer results when stopped

    @property
    def accuracies(self) -> list[float]:
        return [f.val_accuracy for f in self.folds if f.val_accuracy is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accuracies) if self.accuracies else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1): K is small, and the folds are a sample of the splits one could draw."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) >= 2 else None

    def summary_line(self) -> str:
        if self.mean is None:
            return "no fold was validated"
        spread = f" ± {self.std:.2%}" if self.std is not None else ""
        done = f"{len(self.folds)} of {self.wanted} folds (stopped)" if len(self.folds) < self.wanted else \
            f"{self.wanted} folds"
        return f"cross-validated val accuracy {self.mean:.2%}{spread} (mean ± standard deviation over {done})"

    def to_json(self) -> dict:
        return {"folds": [f.to_json() for f in self.folds], "k": self.wanted, "mean_val_accuracy": self.mean,
                "std_val_accuracy": self.std, "complete": len(self.folds) == self.wanted}


def fold_scans(scan: DatasetScan, folds: int, seed: int) -> list[DatasetScan]:
    """K scans over every image of `scan`, the k-th validated on fold k and trained on the rest."""
    samples = scan.train + scan.val
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    smallest = int(torch.bincount(labels, minlength=len(scan.class_names)).min()) if len(samples) else 0
    if smallest < folds:
        raise UserError(f"--folds {folds}: the smallest class has {smallest} image(s); every fold needs one of "
                        f"each class, so use --folds {max(2, smallest)} or fewer" if smallest >= 2 else
                        f"--folds {folds}: a class has fewer than 2 images, so no fold can hold one out")
    assignment = fold_of(labels, folds, seed).tolist()
    return [replace(scan, layout="folders",
                    train=tuple(s for s, f in zip(samples, assignment) if f != k),
                    val=tuple(s for s, f in zip(samples, assignment) if f == k)) for k in range(folds)]


def cross_validate(config: RunConfig, folds: int, callbacks: Callbacks | None = None,
                   control: TrainingControl | None = None,
                   on_fold: Callable[[FoldResult], None] = lambda result: None) -> CrossValidation:
    """Train `config` once per fold (runs in `config.out_dir/fold-k`); folds.json written there at the end."""
    config.validate()
    if not config.out_dir:
        raise UserError("no output folder given for the cross-validation")
    control = control or TrainingControl()
    scan = scan_dataset(config.data.root, config.data.val_fraction, config.train.seed, task=config.data.task)
    if scan.task != "single-label":  # folds are dealt per class, and each fold reports an accuracy
        raise UserError(f"--folds supports single-label data only; {config.data.root} is {scan.task}")
    scans = fold_scans(scan, folds,
                       config.train.seed)
    out = Path(config.out_dir)
    results: list[FoldResult] = []
    for k, scan in enumerate(scans, 1):
        fold_config = replace(config, out_dir=str(out / f"fold-{k}"))
        result = fit(fold_config, callbacks, control, scan=scan)
        if result.stopped == "user":
            break
        config = _with_first_fold_norm_choice(config, result.run_dir)
        results.append(FoldResult(k, len(scan.train), len(scan.val), _last_val_accuracy(result.run_dir),
                                  result.best_val_accuracy, result.run_dir))
        on_fold(results[-1])
    report = CrossValidation(tuple(results), folds)
    atomic_write_bytes(out / FOLDS_FILE, (json.dumps(report.to_json(), indent=2) + "\n").encode())
    return report


def _with_first_fold_norm_choice(config: RunConfig, run_dir: str) -> RunConfig:
    """--adapt-norm auto measured on the first fold decides for every fold: one configuration is
    cross-validated, and with the statistics as loaded the later folds train the head only."""
    choice = RunFolder(run_dir).read_run().norm_choice
    if config.train.adapt_norm != "auto" or choice is None or not choice.measured:
        return config
    return replace(config, train=replace(config.train, adapt_norm="on" if choice.adapted else "off"))


def _last_val_accuracy(run_dir: str) -> float | None:
    epochs = RunFolder(run_dir).read_epochs()
    value = epochs[-1].val_accuracy if epochs else None
    return value if value is not None and math.isfinite(value) else None
