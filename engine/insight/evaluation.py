"""Evaluation: per-image validation records, and what they say about the model.

During training the ValidationRecords listener keeps the best epoch's validation pass as
`val_predictions.csv` (path, true, pred, loss, confidence, top 3) and its embeddings map; nothing
is predicted twice. `summarize` turns records into accuracy, balanced accuracy, the confusion
matrix, per-class precision/recall/F1, the most-confused pairs and the highest-loss images;
`evaluate_run` reads a run's records, `evaluate_checkpoint` predicts another folder (a test set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from engine.data.dataset import Sample, eval_transform, list_dataset, make_loader, normalize_batch
from engine.deploy.tta import VIEWS, mirrored_logits
from engine.errors import UserError
from engine.runs.predictions import PredictionRecord, prediction_records, read_predictions, relative_path
from engine.events import SkippedFile
from engine.runs.run_folder import RunFolder

TOP_LOSSES = 10


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
    tta: dict | None = None  # with test-time augmentation: the views and the accuracy without it

    def to_json(self) -> dict:
        return {
            "accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
            "class_names": list(self.class_names), "confusion_matrix": [list(r) for r in self.confusion_matrix],
            "per_class": {name: dict(stats) for name, stats in self.per_class.items()},
            "most_confused": [dict(pair) for pair in self.most_confused],
            "top_losses": [r.summary() for r in self.top_losses],
            **({"tta": dict(self.tta)} if self.tta else {}),
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


def evaluate_run(run_dir: str | os.PathLike, top_losses: int = TOP_LOSSES, tta: bool = False,
                 device: str = "auto", batch_size: int = 32) -> Evaluation:
    """The run's best epoch, from its val_predictions.csv (nothing is predicted again); with `tta`
    its checkpoint predicts those validation images again, each also mirrored."""
    if tta:
        return _evaluate_run_again(RunFolder(run_dir), top_losses, device, batch_size)
    folder = RunFolder(run_dir)
    record = folder.read_run()
    if not folder.predictions_path.is_file():
        raise UserError(f"{folder.path} has no {folder.predictions_path.name} (a run without validation images, "
                        f"one from an older Transfer Studio, or one stopped before its first epoch ended)")
    class_names = list(record.class_names or ())
    if len(class_names) < 2:
        from engine.model.checkpoint import load_checkpoint

        class_names = list(load_checkpoint(folder.checkpoint_path)["class_names"])
    return summarize(read_predictions(folder.predictions_path), class_names, top_losses,
                     data_root=record.data_root or "")


def _evaluate_run_again(folder: RunFolder, top_losses: int, device: str, batch_size: int) -> Evaluation:
    record = folder.read_run()
    if not folder.predictions_path.is_file() or not folder.has_checkpoint():
        raise UserError(f"{folder.path} has no validation predictions and checkpoint to evaluate again")
    classifier = _load(folder.checkpoint_path)
    root = record.data_root or ""
    index = {name: i for i, name in enumerate(classifier.class_names)}
    samples = [Sample(os.path.join(root, r.path), index[r.true]) for r in read_predictions(folder.predictions_path)
               if r.true in index]
    return _predict_samples(classifier, samples, root, (), device, batch_size, None, top_losses, tta=True)


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, device: str = "auto",
                        batch_size: int = 32, should_stop: Callable[[], bool] | None = None,
                        top_losses: int = TOP_LOSSES, tta: bool = False) -> Evaluation:
    """Predict every image of `data_dir` (both splits of a train/val layout) with a checkpoint whose
    class names must be the folder's. `should_stop()` ends early with what was predicted so far."""
    classifier = _load(checkpoint)
    listing = list_dataset(data_dir, should_stop=should_stop or (lambda: False))
    _check_same_classes(classifier.class_names, list(listing.class_names), checkpoint, data_dir)
    samples = list(listing.samples) + list(listing.given_val)
    return _predict_samples(classifier, samples, listing.root, listing.skipped, device, batch_size, should_stop,
                            top_losses, tta)


def _load(checkpoint):
    from engine.deploy.predict import load_classifier

    return load_classifier(checkpoint)


@torch.no_grad()
def _predict_samples(classifier, samples: list[Sample], root: str, skipped_already, device: str, batch_size: int,
                     should_stop: Callable[[], bool] | None, top_losses: int, tta: bool) -> Evaluation:
    """Predict `samples` (paths under `root`); with `tta` each image also mirrored, the logits averaged,
    and the accuracy without it kept for comparison."""
    from engine.model.devices import select_device

    should_stop = should_stop or (lambda: False)
    target = select_device(device)
    model = classifier.model.to(target).eval()
    prep = classifier.preprocessing
    used, labels, logits, mirrored = [], [], [], []
    skipped = list(skipped_already)
    for batch, held in usable_batches(samples, prep, batch_size, skipped, should_stop):
        used += held
        labels.append(batch.labels.to(target))
        images = normalize_batch(batch.images.to(target), prep)
        logits.append(model(images).float())
        if tta:
            mirrored.append(mirrored_logits(model, images))
    if not labels:
        raise UserError(f"no usable image in {root}")
    paths = [relative_path(s.path, root) for s in used]
    labels_all, plain = torch.cat(labels), torch.cat(logits)
    final = (plain + torch.cat(mirrored)) / 2 if tta else plain
    records = prediction_records(paths, labels_all, final, classifier.class_names)
    views = None
    if tta:
        without = int((plain.argmax(1) == labels_all).sum()) / len(labels_all)
        views = {"views": list(VIEWS), "accuracy_without": without}
    evaluation = summarize(records, classifier.class_names, top_losses, data_root=root, skipped=tuple(skipped))
    return replace(evaluation, tta={**views, "accuracy_change": evaluation.accuracy - views["accuracy_without"]}
                   if views else None)


def usable_batches(samples: list[Sample], prep, batch_size: int, skipped: list[SkippedFile],
                   should_stop: Callable[[], bool] = lambda: False):
    """The decoded batches of `samples` for evaluation, each with the samples it holds; files that
    cannot be decoded are appended to `skipped`. No worker processes: it may run beside a window."""
    loader = make_loader(prep.dataset(samples, eval_transform(prep.crop)), max(1, batch_size),
                         train=False, num_workers=0, seed=0)
    start = 0
    for batch in loader:
        if should_stop():
            return
        failed = {index for index, _ in batch.failures}
        skipped += [SkippedFile(samples[i].path, reason) for i, reason in batch.failures]
        size = len(batch.labels) + len(failed)
        held = [samples[i] for i in range(start, start + size) if i not in failed]
        start += size
        if held:
            yield batch, held


def _check_same_classes(model_names: list[str], data_names: list[str], checkpoint, data_dir) -> None:
    if model_names == data_names:
        return
    missing = [n for n in model_names if n not in data_names]
    extra = [n for n in data_names if n not in model_names]
    parts = [f"missing {', '.join(missing[:5])}" if missing else "",
             f"not in the model {', '.join(extra[:5])}" if extra else ""]
    change = "; ".join(p for p in parts if p) or "same names in another order"
    raise UserError(f"the classes of {data_dir} differ from those of {checkpoint} ({change})")

