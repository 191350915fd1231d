"""Load a trained checkpoint back into plain torchvision and classify images with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.model.checkpoint import load_checkpoint
from engine.data.dataset import Preprocessing, eval_transform, normalize_batch
from engine.errors import UserError
from engine.data.images import BadImage
from engine.model.architectures import plain_model
from engine.training.tasks import CheckpointTask


@dataclass
class LoadedClassifier:
    model: nn.Module
    arch: str
    class_names: list[str]
    preprocessing: Preprocessing
    task: CheckpointTask = field(default_factory=CheckpointTask)  # multi-label thresholds, regression scale


def load_classifier(path: str | Path) -> LoadedClassifier:
    from engine.model.architectures import check_arch

    ckpt = load_checkpoint(Path(path))
    arch, class_names = ckpt["arch"], list(ckpt["class_names"])
    try:
        check_arch(arch)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    model = plain_model(arch, len(class_names), int(ckpt["preprocessing"]["crop"]), for_weights=True)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), "")
        raise UserError(f"{path}: its weights do not fit {arch} with {len(class_names)} classes "
                        f"({detail[:160] or 'different tensors'})") from None
    model.eval()
    return LoadedClassifier(model, arch, class_names, Preprocessing.from_dict(ckpt["preprocessing"]),
                            CheckpointTask.of(ckpt))


def preprocess(paths: list[Path], prep: Preprocessing) -> torch.Tensor:
    crop = eval_transform(prep.crop)
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"image not found: {path}")
        try:
            images.append(crop(prep.decode(Path(path))))
        except BadImage as exc:
            raise UserError(f"cannot use {path}: {exc}") from None
    return normalize_batch(torch.stack(images), prep)


def task_answers(outputs: torch.Tensor, class_names: list[str], task: CheckpointTask) -> list[dict]:
    """Multi-label: the labels at or above their thresholds and every label's probability (sigmoid);
    regression: the value on the target's own scale (de-standardised)."""
    if task.name == "regression":
        values = outputs[:, 0].double() * task.scale + task.mean
        return [{"value": float(v)} for v in values]
    probs = outputs.float().sigmoid()
    thresholds = list(task.thresholds) if len(task.thresholds) == len(class_names) else [0.5] * len(class_names)
    return [{"labels": [n for n, p, t in zip(class_names, row.tolist(), thresholds) if p >= t],
             "probabilities": {n: float(p) for n, p in zip(class_names, row.tolist())}} for row in probs]
