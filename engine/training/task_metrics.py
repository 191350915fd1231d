"""Metrics of the tasks beyond one label per image, in torch (no sklearn dependency).

Multi-label: average precision per label (scikit-learn's `average_precision_score` definition:
sum over distinct score thresholds of (R_n - R_{n-1}) * P_n), mAP as their mean over the labels
that have a positive, F1 at given thresholds (macro: the mean over every label, 0 where undefined,
as scikit-learn's zero_division=0; micro: from the summed counts), and the per-label threshold that
maximises F1 on validation. Regression: MAE, RMSE, R².
"""

from __future__ import annotations

import math

import torch


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float | None:
    """AP of one label: `scores` (N,), `targets` (N,) 0/1; None without a positive (undefined)."""
    targets = targets.float()
    positives = float(targets.sum())
    if positives == 0:
        return None
    order = torch.argsort(scores.float(), descending=True, stable=True)
    s, t = scores.float()[order], targets[order]
    tp, fp = torch.cumsum(t, 0), torch.cumsum(1 - t, 0)
    # One point per distinct score (the last index of each run of ties), as sklearn's curve has.
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision, recall = tp / (tp + fp), tp / positives
    previous = torch.cat([torch.zeros(1), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def mean_average_precision(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float | None, list[float | None]]:
    """(mAP over the labels with a positive, AP per label)."""
    per_label = [average_precision(probs[:, k], targets[:, k]) for k in range(probs.shape[1])]
    defined = [ap for ap in per_label if ap is not None]
    return (sum(defined) / len(defined) if defined else None), per_label


def label_counts(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(tp, fp, fn) per label, predicting a label where its probability >= its threshold."""
    predicted = probs >= thresholds.to(probs.device).view(1, -1)
    actual = targets > 0.5
    return ((predicted & actual).sum(0).float(), (predicted & ~actual).sum(0).float(),
            (~predicted & actual).sum(0).float())


def _f1(tp, fp, fn):
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return precision, recall, f1


def f1_scores(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """macro and micro F1 at the thresholds, and precision, recall, F1 and support per label."""
    tp, fp, fn = label_counts(probs, targets, thresholds)
    precision, recall, f1 = _f1(tp, fp, fn)
    _, _, micro = _f1(tp.sum(), fp.sum(), fn.sum())
    return {"macro_f1": float(f1.mean()) if len(f1) else 0.0, "micro_f1": float(micro),
            "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": (tp + fn).long().tolist()}


DEFAULT_THRESHOLD = 0.5


def tune_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the probability threshold with the highest F1 on these images (the highest such
    threshold on a tie: the fewest false positives); 0.5 for a label without a positive here."""
    thresholds = []
    for k in range(probs.shape[1]):
        p, t = probs[:, k].float(), targets[:, k] > 0.5
        if not bool(t.any()):
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = torch.argsort(p, descending=True, stable=True)
        s, hit = p[order], t[order].float()
        tp, fp = torch.cumsum(hit, 0), torch.cumsum(1 - hit, 0)
        last = torch.ones(len(s), dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]  # predicting every image scored >= s[i]
        fn = float(hit.sum()) - tp
        f1 = 2 * tp / (2 * tp + fp + fn)
        f1 = torch.where(last, f1, torch.full_like(f1, -1.0))
        thresholds.append(float(s[int(torch.argmax(f1))]))  # argmax: the first, i.e. the highest threshold
    return thresholds


def regression_metrics(predicted: torch.Tensor, actual: torch.Tensor) -> dict:
    """MAE, RMSE and R² (None when every actual value is the same: R² is undefined)."""
    predicted, actual = predicted.double().flatten(), actual.double().flatten()
    if not len(actual):
        return {"mae": None, "rmse": None, "r2": None}
    residual = predicted - actual
    total = float(((actual - actual.mean()) ** 2).sum())
    r2 = 1 - float((residual ** 2).sum()) / total if total > 0 else None
    return {"mae": float(residual.abs().mean()), "rmse": math.sqrt(float((residual ** 2).mean())), "r2": r2}
