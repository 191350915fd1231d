"""The head trained on cached trunk features as the epoch loop trains it, without the loop's listeners
(no file written, nothing recorded): how `--adapt-norm auto` scores one set of features.

Same initial head, param groups, optimizer, LR schedule, loss, batch order, epochs and early stopping
as the run, and the epoch it would keep (the task's order: best validation accuracy, mAP or R², then
loss). Afterwards the head is
put back as it was and the random state is untouched, so the run that follows trains the same head
from the same start: on the same features it reaches the same score (up to the device's arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from engine.config import TrainConfig
from engine.errors import Stopped
from engine.model.architectures import ModelInfo
from engine.model.devices import one_thread
from engine.plan.optimization import Optimization, ScheduleSegment
from engine.plan.plan import Plan, apply_plan
from engine.training.batches import FeatureBatches

Features = tuple[torch.Tensor, torch.Tensor]  # (N, D) features, (N,) labels


@dataclass(frozen=True)
class HeadScore:
    epoch: int  # the epoch the run would keep
    score: float  # what --adapt-norm auto compares: balanced accuracy (single-label), mAP, or R²
    order: tuple  # how the loop orders its epochs, the best one largest


@dataclass(frozen=True)
class HeadRecipe:
    """What the epoch loop trains the head with (engine.training.trainer.EpochLoop)."""

    model: nn.Module
    info: ModelInfo
    plan: Plan
    train: TrainConfig
    task: object  # engine.training.tasks: the loss, the validation metrics, the order of epochs
    device: torch.device
    autocast: Callable[[], ContextManager]
    amp_dtype: torch.dtype | None
    classes: int


def fit_head(recipe: HeadRecipe, train: Features, val: Features,
             should_stop: Callable[[], bool] = lambda: False) -> HeadScore | None:
    """The kept epoch's validation score of the head trained on (`train`, `val`); None when no
    epoch gave a finite validation loss (the run would diverge). Raises Stopped when asked to stop."""
    model, cfg = recipe.model, recipe.train
    head = model.get_submodule(recipe.info.head)
    start = {name: value.clone() for name, value in head.state_dict().items()}
    was_training = head.training
    batches = FeatureBatches(train, val, cfg.batch_size, cfg.seed, recipe.device)
    plan = recipe.plan.at_epoch(0)
    apply_plan(model, plan)  # as the loop does before its optimizer sees the parameters
    devices = [recipe.device] if recipe.device.type == "cuda" else []
    try:
        # A dropout in the head draws from the random state: the run must not notice. One thread, as the run's loop.
        with torch.random.fork_rng(devices=devices), one_thread(recipe.device):
            return _train(recipe, head, batches, plan, should_stop)
    finally:
        head.load_state_dict(start)
        head.train(was_training)
        for param in head.parameters():
            param.grad = None


def _train(recipe: HeadRecipe, head: nn.Module, batches: FeatureBatches, plan: Plan,
           should_stop: Callable[[], bool]) -> HeadScore | None:
    cfg = recipe.train
    optimization = Optimization(recipe.model, recipe.info, plan, cfg,
                                ScheduleSegment.planned(cfg, batches.steps_per_epoch))
    optimizer = optimization.optimizer
    scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp_dtype == torch.float16)
    best: HeadScore | None = None
    since_best, step = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        for x, y in batches.train_batches(epoch):
            if should_stop():
                raise Stopped
            optimization.set_lrs(step)
            with recipe.autocast():
                loss = recipe.task.loss(head(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
        score = _validate(recipe, head, batches, epoch)
        if score is None:  # diverged: the run would stop here too
            break
        if best is None or score.order > best.order:
            best, since_best = score, 0
        else:
            since_best += 1
            if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
                break
    return best


@torch.no_grad()
def _validate(recipe: HeadRecipe, head: nn.Module, batches: FeatureBatches, epoch: int) -> HeadScore | None:
    head.eval()
    labels, logits = [], []
    for x, y in batches.val_batches():
        with recipe.autocast():
            logits.append(head(x).float())
        labels.append(y)
    y, out = torch.cat(labels), torch.cat(logits)
    task = recipe.task
    if task.name != "single-label":
        loss = task.val_loss_sum(out, y) / len(y)
        if not math.isfinite(loss):
            return None
        order = task.selection({"loss": loss, "metrics": task.val_metrics(out, y)}, None, loss)
        return HeadScore(epoch=epoch, score=order[0], order=order)
    loss = nn.functional.cross_entropy(out, y, reduction="sum").item() / len(y)
    if not math.isfinite(loss):
        return None
    k = recipe.classes
    confusion = torch.bincount(y * k + out.argmax(1), minlength=k * k).view(k, k).cpu()
    # The loop's own arithmetic (EpochLoop._evaluate), so a score here equals the run's metrics line.
    recalls = [int(confusion[i, i]) / int(confusion[i].sum()) for i in range(k) if int(confusion[i].sum())]
    accuracy = int(confusion.diag().sum()) / len(y)
    return HeadScore(epoch=epoch, score=sum(recalls) / len(recalls), order=(accuracy, -loss))
