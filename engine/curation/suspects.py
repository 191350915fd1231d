"""Suspect labels and near-duplicates: which images of a dataset most likely carry a wrong label.

With a frozen trunk (weights given) every image gets an out-of-sample class probability: the
trunk's features are computed once per file (the feature cache's pass, kept in its per-file store:
moving files between classes costs no new pass), and a logistic-regression head is trained K
times, each time on all folds but one and asked about the fold it never saw. Images are ranked by self-confidence, the probability of their given label, lowest
first (with cleanlab installed, by its `find_label_issues` ranking of the same probabilities).
Without usable features (random weights, or a head that is no linear layer on pooled features)
only a trained run's validation predictions can say anything, and `source` says so.

Near-duplicates: pairs whose features' cosine similarity reaches a threshold while their labels
differ or one is in training and the other in validation (a leak that flatters validation).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.data.dataset import Sample, list_dataset, split_listing
from engine.errors import UserError
from engine.data.dataset import fold_of
from engine.model.features import compute_features, per_file_trunk_features, trunk_store_key
from engine.model.architectures import build_model, check_arch
from engine.model.probe import PROBE_STEPS, fit_probe
from engine.model.devices import select_device
from engine.errors import Stopped

DUPLICATE_THRESHOLD = 0.98
FEATURES = "k-fold"  # source: out-of-fold probabilities from frozen-trunk features
VALIDATION = "validation"  # source: a trained run's validation predictions only


@dataclass(frozen=True)
class SuspectReport:
    suspects: tuple[dict, ...]  # {"path", "given", "likely", "probability"}, most suspect first
    duplicates: tuple[tuple[str, str, float], ...]  # (path, path, similarity), most similar first
    source: str  # FEATURES or VALIDATION
    note: str  # for the person: how the probabilities were found

    def to_json(self) -> dict:
        return {"suspects": [dict(s) for s in self.suspects],
                "duplicates": [[a, b, round(s, 6)] for a, b, s in self.duplicates],
                "source": self.source, "note": self.note}


def find_suspects(data_dir: str | os.PathLike, arch: str, weights: str = "none", folds: int = 5, *,
                  threshold: float = DUPLICATE_THRESHOLD, run_dir: str | os.PathLike | None = None,
                  image_size: int = 224, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                  device: str = "auto", should_stop: Callable[[], bool] = lambda: False,
                  progress: Callable[[str], None] = lambda line: None) -> SuspectReport:
    """Rank the dataset's images by how unlikely their given label is. Paths are relative to `data_dir`;
    `val_fraction` and `seed` give the split the training would use (for duplicates across it).
    `progress(line)`: how far the search is, in one line for a status line (a few thousand images
    take tens of seconds on a CPU)."""
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    check_arch(arch)
    target = select_device(device)
    progress("Listing the dataset's images…")
    listing = list_dataset(data_dir, should_stop)
    if listing.task != "single-label":  # out-of-fold softmax probabilities rank one label per image
        raise UserError(f"suspects supports single-label data only; {data_dir} is {listing.task}")
    scan = split_listing(listing, val_fraction, seed)
    root = Path(listing.root)
    if weights in (None, "", "none"):
        if run_dir is None:
            raise UserError("no usable features with random weights: give --weights (a frozen trunk's K-fold "
                            "probabilities) or --run RUN_DIR (its validation predictions only)")
        return _from_validation(run_dir, root, scan.class_names)
    built = build_model(arch, len(scan.class_names), weights, image_size)
    if not built.info.head_is_linear:
        if run_dir is None:
            raise UserError(f"no usable features: {arch}'s head is a convolution before pooling; give --run RUN_DIR "
                            f"to rank its validation predictions")
        return _from_validation(run_dir, root, scan.class_names)
    samples = scan.train + scan.val
    progress(f"Reading the features of {len(samples):,} images…")
    feats, kept = _features(built, samples, weights, arch, batch_size, seed, target, should_stop,
                            _batch_progress(progress, batch_size))
    labels = torch.tensor([s.label for s in kept])
    probs = out_of_fold_probabilities(feats, labels, len(scan.class_names), folds, seed,
                                      on_fold=lambda fold: progress(f"Training probe {fold} of {folds} on "
                                                                    f"{len(kept):,} images' features…"))
    order = rank(probs, labels)
    names = scan.class_names
    suspects = tuple(_suspect(_rel(kept[i].path, root), names[labels[i]], names[int(probs[i].argmax())],
                              float(probs[i, labels[i]])) for i in order)
    in_val = {s.path for s in scan.val}
    progress("Looking for near-duplicates…")
    dupes = near_duplicates(feats, labels, torch.tensor([s.path in in_val for s in kept]), threshold)
    duplicates = tuple((_rel(kept[i].path, root), _rel(kept[j].path, root), s) for i, j, s in dupes)
    note = (f"out-of-sample probabilities: {folds}-fold logistic regression on frozen {arch} features "
            f"of {len(kept)} image(s)")
    return SuspectReport(suspects, duplicates, FEATURES, note)


# --- features -------------------------------------------------------------------------------------


def _batch_progress(progress: Callable[[str], None], batch_size: int) -> Callable[[int, int], None]:
    """The trunk pass's (batch, batches) as a line; it runs over the images the store lacks only."""
    def report(batch: int, batches: int) -> None:
        progress(f"Computing features: batch {batch:,} of {batches:,} ({batch_size} images each)…")
    return report


def _features(built, samples: tuple[Sample, ...], weights: str, arch: str, batch_size: int, seed: int,
              device: torch.device, should_stop: Callable[[], bool],
              progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, list[Sample]]:
    """(N, D) trunk features of the decodable samples, and those samples. Kept per file (the
    feature cache's per-file store): after files moved between classes, nothing is computed again."""
    trunk_key = trunk_store_key(arch=arch, weights=weights, seed=seed, head=built.info.head,
                                prep=built.preprocessing, amp_dtype=None, device_type=device.type)
    gathered = per_file_trunk_features(built.model.to(device), built.info.head, built.preprocessing, device, samples,
                                       trunk_key, batch_size=batch_size, seed=seed, should_stop=should_stop,
                                       progress=progress, trunk_pass=compute_features)
    if gathered is None:
        raise Stopped
    feats, positions, _ = gathered  # a store that cannot be saved only costs time: its note is not shown
    if len(positions) < 2:
        raise UserError("fewer than 2 decodable images: nothing to compare")
    return feats, [samples[i] for i in positions]


# --- out-of-fold probabilities --------------------------------------------------------------------


def out_of_fold_probabilities(feats: torch.Tensor, labels: torch.Tensor, classes: int, folds: int,
                              seed: int, steps: int = PROBE_STEPS,
                              on_fold: Callable[[int], None] = lambda fold: None) -> torch.Tensor:
    """(N, classes): each image's class probabilities from a probe that never saw it. `on_fold(k)`:
    the k-th probe (from 1) is about to train."""
    folds = min(folds, len(labels))
    assignment = fold_of(labels, folds, seed)
    probs = torch.empty(len(labels), classes)
    for fold in range(folds):
        held = assignment == fold
        if not held.any():
            continue
        on_fold(fold + 1)
        probe = fit_probe(feats[~held], labels[~held], classes, steps)
        probs[held] = probe(feats[held])
    return probs


def rank(probs: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Indices, most suspect first: cleanlab's self-confidence ranking of its label issues when it
    is installed (then the rest), else the probability of the given label, ascending."""
    self_confidence = probs[torch.arange(len(labels)), labels]
    ascending = sorted(range(len(labels)), key=lambda i: (float(self_confidence[i]), i))
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return ascending
    issues = [int(i) for i in find_label_issues(labels.numpy(), probs.numpy(),
                                                return_indices_ranked_by="self_confidence")]
    flagged = set(issues)
    return issues + [i for i in ascending if i not in flagged]


# --- near-duplicates ------------------------------------------------------------------------------


def near_duplicates(feats: torch.Tensor, labels: torch.Tensor, in_val: torch.Tensor,
                    threshold: float = DUPLICATE_THRESHOLD, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with i < j, cosine similarity >= threshold, labels that differ or one image
    in training and one in validation; most similar first. Compared a chunk of rows at a time, so
    memory stays O(chunk x N)."""
    unit = nn.functional.normalize(feats.float(), dim=1)
    pairs = []
    for start in range(0, len(unit), chunk):
        similarity = unit[start:start + chunk] @ unit.T
        rows = torch.arange(start, start + len(similarity))[:, None]
        cols = torch.arange(len(unit))[None, :]
        crosses = (labels[rows] != labels[cols]) | (in_val[rows] != in_val[cols])
        hits = ((similarity >= threshold) & crosses & (cols > rows)).nonzero()
        pairs += [(start + int(r), int(c), float(similarity[r, c])) for r, c in hits]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


# --- validation predictions only ------------------------------------------------------------------


def _from_validation(run_dir: str | os.PathLike, root: Path, class_names) -> SuspectReport:
    """A trained run's validation predictions: the probability of the given label is exp(-loss)."""
    from engine.runs.predictions import read_predictions
    from engine.runs.run_folder import RunFolder

    folder = RunFolder(run_dir)
    folder.read_run()  # one line when it is not a run folder
    if not folder.predictions_path.is_file():
        raise UserError(f"{folder.path} has no {folder.predictions_path.name}: no validation predictions to rank")
    records = read_predictions(folder.predictions_path)
    known = set(class_names)
    ranked = sorted(records, key=lambda r: (-r.loss, r.path))
    suspects = tuple(_suspect(r.path, r.true, r.pred, math.exp(-r.loss)) for r in ranked if r.true in known)
    note = (f"validation images only ({len(suspects)}): no usable trunk features, so these are the run's own "
            f"validation predictions; training images are not ranked")
    return SuspectReport(suspects, (), VALIDATION, note)


def _suspect(path: str, given: str, likely: str, probability: float) -> dict:
    return {"path": path, "given": given, "likely": likely, "probability": round(probability, 6)}


def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
