"""Embeddings: the head's input for each validation image, projected to 2-D by PCA.

The penultimate features are what the head separates; a 2-D map of them shows which classes the
trunk already tells apart and where misclassified images sit. The projection runs with torch on
the run's device (no new dependency); `embeddings.csv` holds path, true, pred, x, y per image.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from engine.runs.csv_files import read_csv_rows, write_csv
from engine.errors import UserError

EMBEDDING_COLUMNS = ("path", "true", "pred", "x", "y")
MIN_POINTS = 3  # fewer points have no meaningful second axis


@dataclass(frozen=True)
class EmbeddingPoint:
    path: str  # relative to the dataset root, posix separators
    true: str
    pred: str
    x: float
    y: float


@contextmanager
def head_inputs(head: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the head's input of every forward call while open, detached and left on its device.
    A feature map (SqueezeNet's convolutional head) is averaged over its positions to one vector."""
    captured: list[torch.Tensor] = []

    def keep(_module, args):
        features = args[0].detach()
        captured.append(features.flatten(2).mean(2) if features.dim() > 2 else features)

    handle = head.register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def project_2d(features: torch.Tensor) -> torch.Tensor | None:
    """(N, D) -> (N, 2): coordinates on the two principal axes, computed on the features' device;
    None when the features cannot be projected (non-finite or degenerate, as in a diverging run:
    the run's own check reports that, the map must not end it first).

    Exact PCA by an eigendecomposition of the smaller of X^T X and X X^T (deterministic, and it
    touches no random state, unlike torch.pca_lowrank: a listener must not change training's RNG).
    Each axis' sign is fixed (its largest loading positive) so the map does not flip between epochs.
    The same features give the same map: cached trunk features (each best epoch of a head trained on
    them, each trial of a search) are projected once."""
    key = _content_key(features)
    with _PROJECTED_LOCK:  # the window's threads may project at once
        if key not in _PROJECTED:
            _PROJECTED[key] = _project(features)
            while len(_PROJECTED) > _PROJECTIONS_KEPT:
                _PROJECTED.pop(next(iter(_PROJECTED)))
        return _PROJECTED[key]


_PROJECTIONS_KEPT = 4
_PROJECTED: dict[tuple, torch.Tensor | None] = {}  # content key -> map, oldest first
_PROJECTED_LOCK = threading.Lock()


def _content_key(features: torch.Tensor) -> tuple:
    data = features.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.reshape(-1).view(torch.uint8).numpy(), digest_size=16).hexdigest()
    return str(features.device), str(data.dtype), tuple(data.shape), digest


def _project(features: torch.Tensor) -> torch.Tensor | None:
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    if not bool(torch.isfinite(x).all()):
        return None
    n, d = x.shape
    try:
        if d <= n:
            _, vectors = torch.linalg.eigh(x.T @ x)
            axes = vectors.flip(1)[:, :2]
        else:
            _, vectors = torch.linalg.eigh(x @ x.T)
            axes = x.T @ vectors.flip(1)[:, :2]
            axes = axes / axes.norm(dim=0, keepdim=True).clamp_min(1e-12)
    except torch.linalg.LinAlgError:
        return None
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    coords = x @ (axes * torch.where(signs == 0, torch.ones_like(signs), signs))
    if coords.shape[1] < 2:  # one feature: one axis, the other is flat
        coords = torch.cat([coords, torch.zeros(n, 2 - coords.shape[1], device=coords.device)], dim=1)
    return coords


def write_embeddings(path: Path, paths: Sequence[str], true: Sequence[str], pred: Sequence[str],
                     coords: torch.Tensor) -> bool:
    """embeddings.csv, atomically; False (nothing written) for fewer than MIN_POINTS images."""
    if len(paths) < MIN_POINTS:
        return False
    write_csv(path, EMBEDDING_COLUMNS, ([p, t, q, f"{x:.6g}", f"{y:.6g}"]
                                        for p, t, q, (x, y) in zip(paths, true, pred, coords.cpu().tolist())))
    return True


def read_embeddings(path: str | Path) -> list[EmbeddingPoint]:
    points = []
    for number, row in read_csv_rows(path, EMBEDDING_COLUMNS, "an embeddings file"):
        try:
            points.append(EmbeddingPoint(row[0], row[1], row[2], float(row[3]), float(row[4])))
        except (IndexError, ValueError):
            raise UserError(f"{path}, line {number}: not a valid embeddings row") from None
    return points
