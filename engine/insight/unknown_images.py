"""How well the unknown rule works on images of no class: `evaluate RUN --unknown DIR`.

The run's validation images (val_logits.pt, nothing predicted again) are the known side, the images
of DIR the unknown side. Reported: the share of DIR's images marked unknown (caught), its complement
(the false-accept rate: unknown images taken for a class), the AUROC of the chosen score between the
two sides (1.0: every known image scores above every unknown one), and the validation share kept.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.data.images import BadImage, is_image_file
from engine.data.dataset import eval_transform, normalize_batch
from engine.errors import UserError
from engine.model.calibration import auroc, known_scores
from engine.model.checkpoint import load_checkpoint
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import read_val_logits

BATCH = 32


@dataclass(frozen=True)
class UnknownReport:
    score: str
    threshold: float
    unknown_images: int
    caught: float  # share of DIR's images marked unknown
    false_accept_rate: float  # share of DIR's images taken for a class
    auroc: float | None  # known (validation) vs unknown, by the score
    validation_images: int
    validation_kept: float
    skipped: int  # files of DIR that could not be decoded

    def to_json(self) -> dict:
        return asdict(self)


def unknown_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--unknown needs a folder of images: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError(f"{folder} holds no image files")
    return files


@torch.no_grad()
def evaluate_unknown(checkpoint: str | os.PathLike, unknown_dir: str | os.PathLike) -> UnknownReport:
    """`checkpoint` must lie in its run folder (its validation logits are the known side)."""
    from engine.deploy.predict import load_classifier

    from engine.training.tasks import CheckpointTask, refuse_unless_single_label

    checkpoint = Path(checkpoint)
    refuse_unless_single_label(CheckpointTask.of(load_checkpoint(checkpoint)).name, "the unknown-image score")
    calibration = load_checkpoint(checkpoint).get("calibration")
    if not isinstance(calibration, dict) or not isinstance(calibration.get("unknown"), dict):
        raise UserError(f"{checkpoint} has no unknown threshold (trained before calibration was recorded, or "
                        f"without validation images)")
    rule, temperature = calibration["unknown"], float(calibration["temperature"])
    known = read_val_logits(RunFolder(checkpoint.parent).val_logits_path)
    files = unknown_files(unknown_dir)
    classifier = load_classifier(checkpoint)
    prep, crop = classifier.preprocessing, eval_transform(classifier.preprocessing.crop)
    logits, skipped = [], 0
    for start in range(0, len(files), BATCH):
        images = []
        for path in files[start:start + BATCH]:
            try:
                images.append(crop(prep.decode(path)))
            except (BadImage, OSError):
                skipped += 1
        if images:
            logits.append(classifier.model(normalize_batch(torch.stack(images), prep)).float())
    if not logits:
        raise UserError(f"no usable image in {unknown_dir}")
    threshold = float(rule["threshold"])
    unknown_scores = known_scores(torch.cat(logits), rule["score"], temperature)
    known_side = known_scores(known.logits, rule["score"], temperature)
    caught = float((unknown_scores < threshold).double().mean())
    return UnknownReport(rule["score"], threshold, len(unknown_scores), caught, 1.0 - caught,
                         auroc(known_side, unknown_scores), len(known_side),
                         float((known_side >= threshold).double().mean()), skipped)
