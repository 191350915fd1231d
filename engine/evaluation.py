"""Evaluation: per-image validation records, and what they say about the model.

During training the ValidationRecords listener keeps the best epoch's validation pass as
`val_predictions.csv` (path, true, pred, loss, confidence, top 3) and its embeddings map; nothing
is predicted twice. `summarize` turns records into accuracy, balanced accuracy, the confusion
matrix, per-class precision/recall/F1, the most-confused pairs and the highest-loss images;
`evaluate_run` reads a run's records, `evaluate_checkpoint` predicts another folder (a test set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .csv_files import read_csv_rows, write_csv
from .data import ImageDataset, Sample, eval_transform, list_dataset, make_loader, normalize_batch
from .embeddings import MIN_POINTS, project_2d, write_embeddings
from .errors import RunFailed, UserError
from .events import EpochEvent, SkippedFile
from .listeners import Listener
from .run_folder import RunFolder

TOP_K = 3
PREDICTION_COLUMNS = ("path", "true", "pred", "loss", "confidence",
                      *(f"top{i}{suffix}" for i in range(1, TOP_K + 1) for suffix in ("", "_probability")))
TOP_LOSSES = 10


@dataclass(frozen=True)
class PredictionRecord:
    path: str  # relative to the dataset root, posix separators
    true: str
    pred: str
    loss: float  # cross-entropy of this image
    confidence: float  # probability of the predicted class
    top: tuple[tuple[str, float], ...]  # up to TOP_K (class, probability), most probable first

    def summary(self) -> dict:
        return {"path": self.path, "true": self.true, "pred": self.pred, "loss": self.loss,
                "confidence": self.confidence}


@dataclass(frozen=True)
class ValidationOutputs:
    """One validation pass, as the epoch loop saw it; tensors stay on the run's device."""

    samples: tuple[Sample, ...] | None  # the images in row order; None when that order is not known for sure
    labels: torch.Tensor  # (N,)
    logits: torch.Tensor  # (N, K) float
    features: torch.Tensor | None  # (N, D): the head's input; None when it could not be captured


@torch.no_grad()
def prediction_records(paths: Sequence[str], labels: torch.Tensor, logits: torch.Tensor,
                       class_names: Sequence[str]) -> list[PredictionRecord]:
    """Records from labels and logits on any device: computed there, one transfer at the end."""
    logits = logits.float()
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1)  # as the trainer's confusion matrix counts, also for tied logits
    k = min(TOP_K, len(class_names))
    top_p, top_i = probs.topk(k, dim=1)
    table = torch.cat([labels[:, None].float(), pred[:, None].float(),
                       nn.functional.cross_entropy(logits, labels, reduction="none")[:, None],
                       probs.gather(1, pred[:, None]), top_p, top_i.float()], dim=1).cpu().tolist()
    records = []
    for path, row in zip(paths, table):
        top = tuple((class_names[int(i)], p) for p, i in zip(row[4:4 + k], row[4 + k:]))
        records.append(PredictionRecord(path, class_names[int(row[0])], class_names[int(row[1])],
                                        row[2], row[3], top))
    return records


def write_predictions(path: Path, records: Sequence[PredictionRecord]) -> None:
    def row(r: PredictionRecord) -> list:
        top = [value for name, p in r.top for value in (name, f"{p:.6g}")]
        top += [""] * (2 * TOP_K - len(top))  # fewer than TOP_K classes: blank columns
        return [r.path, r.true, r.pred, f"{r.loss:.6g}", f"{r.confidence:.6g}", *top]

    write_csv(path, PREDICTION_COLUMNS, (row(r) for r in records))


def read_predictions(csv_path: str | Path) -> list[PredictionRecord]:
    """The records of a val_predictions.csv; one-line UserError for a missing or malformed file."""
    path = Path(csv_path)
    rows = read_csv_rows(path, PREDICTION_COLUMNS, "a predictions file")
    records = []
    for number, row in rows:
        try:
            if len(row) != len(PREDICTION_COLUMNS) or not row[0]:
                raise ValueError
            top = tuple((row[i], float(row[i + 1])) for i in range(5, len(row), 2) if row[i])
            records.append(PredictionRecord(row[0], row[1], row[2], float(row[3]), float(row[4]), top))
        except ValueError:
            raise UserError(f"{path}, line {number}: not a valid predictions row") from None
    return records


def _relative(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


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
            self._write(self.latest())
        except OSError as exc:  # a full or read-only disk ends the run as the checkpoint's would
            raise RunFailed(f"could not save {exc.filename or 'the validation records'}: {exc.strerror or exc}; "
                            f"the run is stopped and the last files written completely are kept") from None

    def _write(self, outputs: ValidationOutputs | None) -> None:
        if outputs is None or outputs.samples is None:
            self.folder.predictions_path.unlink(missing_ok=True)
            self.folder.embeddings_path.unlink(missing_ok=True)
            return
        paths = [_relative(s.path, self.data_root) for s in outputs.samples]
        records = prediction_records(paths, outputs.labels, outputs.logits, self.class_names)
        write_predictions(self.folder.predictions_path, records)
        written = False
        coords = project_2d(outputs.features) if outputs.features is not None and len(records) >= MIN_POINTS else None
        if coords is not None:
            written = write_embeddings(self.folder.embeddings_path, paths, [r.true for r in records],
                                       [r.pred for r in records], coords)
        if not written:
            self.folder.embeddings_path.unlink(missing_ok=True)


# --- summaries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    balanced_accuracy: float  # mean recall over the classes that have images
    class_names: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted, in class order
    per_class: dict[str, dict]  # name -> precision, recall, f1 (0.0 where undefined), support
    most_confused: list[dict]  # {"true", "pred", "count"}, off-diagonal, most first
    top_losses: list[PredictionRecord]  # highest loss first
    records: list[PredictionRecord]
    data_root: str = ""  # where the records' relative paths start
    skipped: tuple[SkippedFile, ...] = field(default_factory=tuple)  # images that could not be used

    def to_json(self) -> dict:
        return {
            "accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
            "class_names": list(self.class_names), "confusion_matrix": [list(r) for r in self.confusion_matrix],
            "per_class": {name: dict(stats) for name, stats in self.per_class.items()},
            "most_confused": [dict(pair) for pair in self.most_confused],
            "top_losses": [r.summary() for r in self.top_losses],
        }


def summarize(records: Sequence[PredictionRecord], class_names: Sequence[str], top_losses: int = TOP_LOSSES,
              data_root: str = "", skipped: Sequence[SkippedFile] = ()) -> Evaluation:
    names = list(class_names)
    if not records:
        raise UserError("no predictions to evaluate (no usable images)")
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({n for r in records for n in (r.true, r.pred)} - set(index))
    if unknown:
        raise UserError(f"the predictions name classes the model does not have: {', '.join(unknown[:5])}")
    k = len(names)
    confusion = [[0] * k for _ in range(k)]
    for r in records:
        confusion[index[r.true]][index[r.pred]] += 1
    per_class, recalls = {}, []
    for i, name in enumerate(names):
        support, predicted, hits = sum(confusion[i]), sum(row[i] for row in confusion), confusion[i][i]
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            recalls.append(recall)
    pairs = [{"true": names[t], "pred": names[p], "count": confusion[t][p]}
             for t in range(k) for p in range(k) if t != p and confusion[t][p]]
    pairs.sort(key=lambda pair: -pair["count"])  # stable: ties stay in class order
    ranked = sorted(records, key=lambda r: -r.loss)
    return Evaluation(
        accuracy=sum(confusion[i][i] for i in range(k)) / len(records),
        balanced_accuracy=sum(recalls) / len(recalls), class_names=names, confusion_matrix=confusion,
        per_class=per_class, most_confused=pairs, top_losses=ranked[:max(0, top_losses)], records=list(records),
        data_root=data_root, skipped=tuple(skipped))


def evaluate_run(run_dir: str | os.PathLike, top_losses: int = TOP_LOSSES) -> Evaluation:
    """The run's best epoch, from its val_predictions.csv (nothing is predicted again)."""
    folder = RunFolder(run_dir)
    record = folder.read_record()
    if not folder.predictions_path.is_file():
        raise UserError(f"{folder.path} has no {folder.predictions_path.name} (a run without validation images, "
                        f"one from an older Transfer Studio, or one stopped before its first epoch ended)")
    class_names = record.get("class_names")
    if not isinstance(class_names, list) or len(class_names) < 2:
        from .checkpoint import load_checkpoint

        class_names = list(load_checkpoint(folder.checkpoint_path)["class_names"])
    root = (record.get("dataset") or {}).get("root") or record["config"].get("data", {}).get("root", "")
    return summarize(read_predictions(folder.predictions_path), class_names, top_losses, data_root=str(root))


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, device: str = "auto",
                        batch_size: int = 32, should_stop: Callable[[], bool] | None = None,
                        top_losses: int = TOP_LOSSES) -> Evaluation:
    """Predict every image of `data_dir` (both splits of a train/val layout) with a checkpoint whose
    class names must be the folder's. `should_stop()` ends early with what was predicted so far."""
    from .predict import load_classifier
    from .run_setup import select_device

    should_stop = should_stop or (lambda: False)
    classifier = load_classifier(checkpoint)
    listing = list_dataset(data_dir, should_stop=should_stop)
    _check_same_classes(classifier.class_names, list(listing.class_names), checkpoint, data_dir)
    target = select_device(device)
    model = classifier.model.to(target).eval()
    prep = classifier.preprocessing
    samples = list(listing.samples) + list(listing.given_val)
    loader = make_loader(ImageDataset(samples, prep.resize, eval_transform(prep.crop)), max(1, batch_size),
                         train=False, num_workers=0, seed=0)  # no worker processes: it may run beside a window
    used, labels, logits = [], [], []
    skipped = list(listing.skipped)
    start = 0
    for batch in loader:
        if should_stop():
            break
        failed = {index for index, _ in batch.failures}
        skipped += [SkippedFile(samples[i].path, reason) for i, reason in batch.failures]
        size = len(batch.labels) + len(failed)
        used += [samples[i] for i in range(start, start + size) if i not in failed]
        start += size
        if len(batch.labels):
            labels.append(batch.labels.to(target))
            logits.append(model(normalize_batch(batch.images.to(target), prep)).float())
    if not labels:
        raise UserError(f"no usable image in {data_dir}")
    paths = [_relative(s.path, listing.root) for s in used]
    records = prediction_records(paths, torch.cat(labels), torch.cat(logits), classifier.class_names)
    return summarize(records, classifier.class_names, top_losses, data_root=listing.root, skipped=tuple(skipped))


def _check_same_classes(model_names: list[str], data_names: list[str], checkpoint, data_dir) -> None:
    if model_names == data_names:
        return
    missing = [n for n in model_names if n not in data_names]
    extra = [n for n in data_names if n not in model_names]
    parts = [f"missing {', '.join(missing[:5])}" if missing else "",
             f"not in the model {', '.join(extra[:5])}" if extra else ""]
    change = "; ".join(p for p in parts if p) or "same names in another order"
    raise UserError(f"the classes of {data_dir} differ from those of {checkpoint} ({change})")

