"""What a classifier's logits are worth as probabilities, and when an image is of no class.

Temperature scaling (Guo et al., ICML 2017): one scalar T, fitted on validation logits by minimising
the negative log-likelihood of softmax(logits / T); it never changes a prediction, only how sure it
is. ECE with 15 equal-width confidence bins says how far confidence is from accuracy, before and after.

Unknown inputs: two scores, higher meaning "more like the training classes": the maximum softmax
probability, and the negative energy T·logsumexp(logits / T) (Liu et al., NeurIPS 2020). Without
images of no class at training time, the better score is the one that best tells the validation
images the model gets right from those it gets wrong (AUROC); the threshold keeps KEEP_SHARE of the
validation images. Pure torch on CPU tensors: used by training (at each best epoch), predict and evaluate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ECE_BINS = 15
KEEP_SHARE = 0.95  # of validation images above the unknown threshold
# T is clamped: a validation set the model gets all right would otherwise drive T towards 0.
T_MIN, T_MAX = 0.05, 100.0
SCORES = ("energy", "max_softmax")


@torch.no_grad()
def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising validation NLL (LBFGS on log T, so T stays positive); 1.0 when nothing is
    gained (no images, or a fit that does not lower the NLL)."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        t = log_t.clamp(math.log(T_MIN), math.log(T_MAX)).exp()
        loss = nn.functional.cross_entropy(logits / t, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().clamp(math.log(T_MIN), math.log(T_MAX)).exp())
    if not math.isfinite(fitted):
        return 1.0
    if negative_log_likelihood(logits, labels, fitted) > negative_log_likelihood(logits, labels, 1.0):
        return 1.0
    return fitted


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width confidence bin: (lower, upper], its images, their mean confidence and accuracy."""

    lower: float
    upper: float
    count: int
    confidence: float  # 0.0 for an empty bin
    accuracy: float


@torch.no_grad()
def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """The reliability diagram's bins, and what ECE sums: each bin's top-1 confidence against its accuracy."""
    confidence, predicted = probabilities.float().max(dim=1)
    correct = (predicted == labels.to(predicted.device)).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin.
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    table = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        table.append(ReliabilityBin(b / bins, (b + 1) / bins, count,
                                    float(confidence[members].mean()) if count else 0.0,
                                    float(correct[members].mean()) if count else 0.0))
    return table


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Σ over equal-width confidence bins of (share of images) × |accuracy − mean confidence|."""
    if len(labels) == 0:
        return 0.0
    return sum(b.count / len(labels) * abs(b.accuracy - b.confidence)
               for b in reliability_bins(probabilities, labels, bins) if b.count)


@torch.no_grad()
def calibrated_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return (logits.float() / temperature).softmax(dim=1)


@torch.no_grad()
def known_scores(logits: torch.Tensor, score: str, temperature: float = 1.0) -> torch.Tensor:
    """Higher means more like the training classes: max softmax probability, or negative energy."""
    logits = logits.float()
    if score == "energy":
        return temperature * torch.logsumexp(logits / temperature, dim=1)
    if score == "max_softmax":
        return calibrated_probabilities(logits, temperature).max(dim=1).values
    raise ValueError(f"unknown score {score!r} (use {', '.join(SCORES)})")


def auroc(positives: torch.Tensor, negatives: torch.Tensor) -> float | None:
    """The probability that a random positive scores above a random negative (ties count half);
    None when either side is empty."""
    if len(positives) == 0 or len(negatives) == 0:
        return None
    scores = torch.cat([positives.double(), negatives.double()])
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average the ranks of ties
        tied = scores == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def keep_threshold(scores: torch.Tensor, keep: float = KEEP_SHARE) -> float:
    """The highest threshold that keeps at least `keep` of `scores` (score >= threshold is kept)."""
    ordered = scores.double().sort().values
    dropped = int(math.floor((1.0 - keep) * len(ordered) + 1e-9))
    return float(ordered[min(dropped, len(ordered) - 1)])


def unknown_rule(logits: torch.Tensor, labels: torch.Tensor, temperature: float, keep: float = KEEP_SHARE) -> dict:
    """The better of the two scores on validation and its threshold: {"score", "threshold", "keep",
    "validation_kept", "error_auroc": {score: AUROC of right vs wrong, or None}}."""
    correct = logits.argmax(dim=1) == labels
    aurocs = {}
    for score in SCORES:
        values = known_scores(logits, score, temperature)
        aurocs[score] = auroc(values[correct], values[~correct])
    # Energy wins ties and the case of no wrong image at all: it separates unknowns better in most reports.
    best = max(SCORES, key=lambda s: (aurocs[s] if aurocs[s] is not None else -1.0, s == "energy"))
    values = known_scores(logits, best, temperature)
    threshold = keep_threshold(values, keep)
    return {"score": best, "threshold": threshold, "keep": keep,
            "validation_kept": float((values >= threshold).double().mean()), "error_auroc": aurocs}


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Everything deployment needs from a validation pass: T, NLL and ECE before and after, the unknown rule."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    temperature = fit_temperature(logits, labels)
    return {
        "temperature": temperature, "images": len(labels), "ece_bins": ECE_BINS,
        "nll_before": negative_log_likelihood(logits, labels), "nll_after": negative_log_likelihood(logits, labels, temperature),
        "ece_before": expected_calibration_error(calibrated_probabilities(logits), labels),
        "ece_after": expected_calibration_error(calibrated_probabilities(logits, temperature), labels),
        "unknown": unknown_rule(logits, labels, temperature),
    }
