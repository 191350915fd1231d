"""What the processes of a run combine: trunk features, and after each epoch training sums,
validation and integrity.

Each rank trains and validates on its own share (engine.distributed.sharding); the figures a person reads are
those of all shares together. Sums (losses, correct counts, the confusion matrix) are all-reduced,
so the reported validation accuracy is exactly that of one process evaluating the same weights.
Rank 0 also receives every rank's per-image outputs, put back in the validation set's order, for
the records it writes. Freeze integrity is checked by every rank on its own copy of the model
and the verdicts compared: a frozen tensor that differs on any rank fails the run on all of them.
Trunk features missing from the cache are computed once over all ranks: each its share of the
files, then gathered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from engine.distributed.process_group import ProcessGroup
from engine.events import IntegrityReport
from engine.listener import Listener
from engine.runs.run_folder import RunFolder
from engine.distributed.sharding import interleaved, validation_share


def features_shared_between_ranks(group: ProcessGroup, compute: Callable[[list], tuple[torch.Tensor, set[int]] | None]):
    """`compute(samples) -> (features of those that decoded, positions of those that did not)`, run
    by each rank on every W-th sample and the results gathered back into the samples' order. When
    the ranks were not asked for the same samples (a cache changed under one of them), each
    computes all of them itself rather than mixing up rows."""
    if not group.is_distributed:
        return compute

    def shared(samples: Sequence) -> tuple[torch.Tensor, set[int]] | None:
        asked = group.gather_objects([s.path for s in samples])
        if any(paths != asked[0] for paths in asked):
            return compute(list(samples))
        mine = compute(list(samples[group.rank::group.world_size]))
        results = group.gather_objects(None if mine is None else (mine[0].cpu(), sorted(mine[1])))
        if any(result is None for result in results):
            return None  # stopped
        rows: dict[int, torch.Tensor] = {}
        failed: set[int] = set()
        for rank, (features, rank_failed) in enumerate(results):
            positions = range(rank, len(samples), group.world_size)  # this rank's share, as it computed it
            not_decoded = set(rank_failed)
            failed.update(positions[i] for i in not_decoded)
            rows.update(zip((p for i, p in enumerate(positions) if i not in not_decoded), features))
        ordered = [rows[i] for i in sorted(rows)]
        return (torch.stack(ordered) if ordered else torch.empty(0, 0)), failed

    return shared


def epoch_totals(group: ProcessGroup, loss_sum: float, correct: torch.Tensor, seen: int,
                 device: torch.device) -> tuple[float, int, int]:
    """(loss sum, correct, seen) of the epoch's training batches over every rank."""
    totals = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64, device=device)
    group.sum(totals)
    loss_sum, correct_all, seen_all = totals.tolist()
    return loss_sum, int(round(correct_all)), int(round(seen_all))


@dataclass(frozen=True)
class CombinedValidation:
    seen: int
    loss_sum: float
    confusion: torch.Tensor  # k x k, on the CPU
    labels: torch.Tensor | None = None  # every image's, in validation-set order: rank 0 only, when complete
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None


def combine_validation(group: ProcessGroup, labels: list[torch.Tensor], logits: list[torch.Tensor],
                       features: list[torch.Tensor], classes: int, val_images: int,
                       device: torch.device) -> CombinedValidation:
    """This rank's validation outputs (possibly none) combined with the others'. Called on every
    rank, also one whose share is empty."""
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    out = torch.cat(logits) if logits else torch.zeros((0, classes), device=device)
    loss_sum = nn.functional.cross_entropy(out, y, reduction="sum") if len(y) else torch.zeros((), device=device)
    confusion = torch.bincount(y * classes + out.argmax(1), minlength=classes * classes).to(torch.float64)
    sums = group.sum(torch.cat([loss_sum.reshape(1).to(torch.float64), confusion]))
    confusion = sums[1:].round().long().view(classes, classes).cpu()
    seen = int(confusion.sum())
    feats = torch.cat(features) if features and sum(len(f) for f in features) == len(y) else None
    shares = group.gather_to_main((y.cpu(), out.cpu(), None if feats is None else feats.cpu()))
    if shares is None:
        return CombinedValidation(seen=seen, loss_sum=float(sums[0]), confusion=confusion)
    complete = all(len(share[0]) == len(validation_share(val_images, rank, group.world_size))
                   for rank, share in enumerate(shares))
    if not complete:  # a file failed on some rank: no per-image records rather than records for wrong paths
        return CombinedValidation(seen=seen, loss_sum=float(sums[0]), confusion=confusion)
    with_features = all(share[2] is not None for share in shares)
    return CombinedValidation(
        seen=seen, loss_sum=float(sums[0]), confusion=confusion,
        labels=interleaved([s[0] for s in shares]).to(device), logits=interleaved([s[1] for s in shares]).to(device),
        features=interleaved([s[2] for s in shares]).to(device) if with_features else None)


def fingerprints_digest(fingerprints: dict[str, str]) -> str:
    """One digest of every promised tensor's fingerprint: equal on two ranks only when each of
    their frozen tensors is bit for bit the same."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(fingerprints):
        digest.update(f"{name}={fingerprints[name]};".encode())
    return digest.hexdigest()


def integrity_across_ranks(group: ProcessGroup, report: IntegrityReport,
                           fingerprints: dict[str, str]) -> tuple[IntegrityReport, list[dict]]:
    """The run's verdict (changed on any rank, or ranks holding different frozen tensors) and
    each rank's own: rank, tensors checked, changed, digest."""
    mine = {"rank": group.rank, "checked": report.checked, "changed": list(report.changed),
            "digest": fingerprints_digest(fingerprints)}
    ranks = group.gather_objects(mine)
    changed = list(dict.fromkeys(name for r in ranks for name in r["changed"]))
    changed += [f"(rank {r['rank']} holds other frozen tensors than rank 0)" for r in ranks[1:]
                if r["digest"] != ranks[0]["digest"]]
    return IntegrityReport(epoch=report.epoch, checked=report.checked, changed=tuple(changed)), ranks


class ProcessesRecord(Listener):
    """run.json's "processes": how many trained the run, and each rank's integrity after the
    last epoch (rank 0 writes it)."""

    def __init__(self, folder: RunFolder, world_size: int, latest) -> None:
        self.folder, self.world_size, self.latest = folder, world_size, latest

    def on_epoch_end(self, event) -> None:
        self.folder.update_record(processes={"world_size": self.world_size, "integrity": self.latest()})
