"""Evaluation of multi-label and regression models: a run's best validation pass (val_outputs.pt)
or a checkpoint on a labels CSV (a test set).

Multi-label: mAP, macro and micro F1 at the per-label thresholds, and per label precision, recall,
F1, AP, threshold and support. A run's evaluation tunes the thresholds on its validation images
(max F1, the checkpoint's own); a test set is scored at the checkpoint's thresholds. Regression:
MAE, RMSE, R² on the target's own scale, and the images with the largest residuals. Each image's
answer is kept as well (ImageOutputs), for the views that show images (engine.insight.task_views).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.data.dataset import list_dataset, normalize_batch
from engine.errors import UserError
from engine.events import SkippedFile
from engine.insight.evaluation import usable_batches
from engine.runs.predictions import relative_path
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import read_val_outputs
from engine.training.task_metrics import f1_scores, mean_average_precision, regression_metrics, tune_thresholds
from engine.training.tasks import CheckpointTask

WORST = 10


@dataclass(frozen=True)
class ImageOutputs:
    """Each evaluated image's answer, in one order. Multi-label: (N, K) probabilities, 0/1 targets
    and each label's binary cross-entropy; regression: (N,) predicted and actual values (no losses)."""

    paths: tuple[str, ...]  # relative to the data root; "" where the run did not record it
    predicted: torch.Tensor
    targets: torch.Tensor
    losses: torch.Tensor | None = None


@dataclass(frozen=True)
class TaskEvaluation:
    task: str
    names: tuple[str, ...]
    images: int
    figures: dict  # multi-label: mAP, macro_f1, micro_f1, per_label; regression: mae, rmse, r2, worst
    data_root: str = ""
    skipped: tuple[SkippedFile, ...] = field(default_factory=tuple)
    outputs: ImageOutputs | None = field(default=None, compare=False)  # not in to_json: the views read it

    def to_json(self) -> dict:
        return {"task": self.task, "images": self.images, **self.figures}


def summarize_task(task: CheckpointTask, names, outputs: torch.Tensor, targets: torch.Tensor, paths,
                   tune: bool, worst: int = WORST, data_root: str = "", skipped=()) -> TaskEvaluation:
    if not len(outputs):
        raise UserError("no predictions to evaluate (no usable images)")
    named = tuple(paths[i] if i < len(paths) else "" for i in range(len(outputs)))
    if task.name == "multi-label":
        probs = outputs.float().sigmoid()
        thresholds = (tune_thresholds(probs, targets) if tune or len(task.thresholds) != len(names)
                      else list(task.thresholds))
        mean_ap, aps = mean_average_precision(probs, targets)
        f1 = f1_scores(probs, targets, torch.tensor(thresholds))
        per_label = {name: {"precision": f1["precision"][k], "recall": f1["recall"][k], "f1": f1["f1"][k],
                            "ap": aps[k], "threshold": thresholds[k], "support": f1["support"][k]}
                     for k, name in enumerate(names)}
        figures = {"mAP": mean_ap, "macro_f1": f1["macro_f1"], "micro_f1": f1["micro_f1"],
                   "thresholds_from": "validation (tuned here, max F1)" if tune else "the checkpoint",
                   "per_label": per_label}
        losses = torch.nn.functional.binary_cross_entropy_with_logits(outputs.float(), targets.float(), reduction="none")
        kept = ImageOutputs(named, probs, (targets > 0.5).float(), losses)
    else:
        values = outputs[:, 0].double() * task.scale + task.mean
        actual = targets.double().flatten()
        figures = regression_metrics(values, actual)
        residual = values - actual
        order = residual.abs().argsort(descending=True)[:max(0, worst)].tolist()
        figures["worst"] = [{"path": paths[i] if i < len(paths) else None, "value": float(actual[i]),
                             "predicted": float(values[i]), "residual": float(residual[i])} for i in order]
        kept = ImageOutputs(named, values, actual)
    return TaskEvaluation(task.name, tuple(names), len(outputs), figures, data_root, tuple(skipped), kept)


def evaluate_task_run(run_dir: str | os.PathLike, checkpoint: dict, worst: int = WORST) -> TaskEvaluation:
    """The run's best epoch, from val_outputs.pt (nothing predicted again)."""
    folder = RunFolder(run_dir)
    record = folder.read_run()
    saved = read_val_outputs(folder.val_outputs_path)
    task = CheckpointTask.of(checkpoint)
    return summarize_task(task, saved.names, saved.outputs, saved.targets, saved.paths, tune=True, worst=worst,
                          data_root=record.data_root or "")


@torch.no_grad()
def evaluate_task_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike, device: str = "auto",
                             batch_size: int = 32, worst: int = WORST) -> TaskEvaluation:
    """Predict every usable row of a labels CSV (both splits) with a multi-label or regression checkpoint."""
    from engine.deploy.predict import load_classifier
    from engine.model.devices import select_device

    classifier = load_classifier(checkpoint)
    task = classifier.task
    known = classifier.class_names if task.name == "multi-label" else None
    if not str(data).lower().endswith(".csv"):
        raise UserError(f"a {task.name} model is evaluated on a labels CSV, not on {data}")
    listing = list_dataset(data, task=task.name, known_labels=known)
    target = select_device(device)
    model = classifier.model.to(target).eval()
    prep = classifier.preprocessing
    samples = list(listing.samples) + list(listing.given_val)
    outputs, targets, used, skipped = [], [], [], list(listing.skipped)
    for batch, held in usable_batches(samples, prep, batch_size, skipped):
        used += held
        targets.append(batch.labels)
        outputs.append(model(normalize_batch(batch.images.to(target), prep)).float().cpu())
    if not outputs:
        raise UserError(f"no usable image in {data}")
    paths = [relative_path(s.path, listing.root) for s in used]
    return summarize_task(task, classifier.class_names, torch.cat(outputs), torch.cat(targets), paths, tune=False,
                          worst=worst, data_root=listing.root, skipped=skipped)


def format_task_evaluation(evaluation: TaskEvaluation) -> str:
    f = evaluation.figures
    lines = [f"{evaluation.task} · {evaluation.images} image(s)"]
    if evaluation.data_root:
        lines.append(f"images under {evaluation.data_root}")
    if evaluation.task == "multi-label":
        show = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"mAP {show(f['mAP'])} · macro F1 {f['macro_f1']:.4f} · micro F1 {f['micro_f1']:.4f} "
                     f"(thresholds from {f['thresholds_from']})")
        width = max(8, *(len(n) for n in evaluation.names)) + 2
        lines.append(f"\n{'label':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'ap':>10}{'threshold':>10}"
                     f"{'support':>10}")
        for name, s in f["per_label"].items():
            lines.append(f"{name:<{width}}{s['precision']:>10.3f}{s['recall']:>10.3f}{s['f1']:>10.3f}"
                         f"{show(s['ap']):>10}{s['threshold']:>10.3f}{s['support']:>10}")
    else:
        r2 = "n/a (every value the same)" if f["r2"] is None else f"{f['r2']:.4f}"
        lines.append(f"MAE {f['mae']:.6g} · RMSE {f['rmse']:.6g} · R² {r2}")
        if f["worst"]:
            lines.append("\nlargest residuals (predicted - actual)")
        for w in f["worst"]:
            lines.append(f"  {w['residual']:>+10.4g}  {w['path']}  actual {w['value']:.6g}, predicted {w['predicted']:.6g}")
    return "\n".join(lines)


def checkpoint_task_of(source: Path) -> str:
    """The task of a run folder's checkpoint or of a checkpoint file ("single-label" for older ones)."""
    from engine.model.checkpoint import load_checkpoint

    path = RunFolder(source).checkpoint_path if source.is_dir() else source
    if not path.is_file():
        return "single-label"  # the single-label path says what is missing, as before
    return CheckpointTask.of(load_checkpoint(path)).name
