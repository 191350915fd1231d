"""The LR range test over a whole plan: one multiplier m on every param group's own LR.

fastai, Lightning and torch-lr-finder sweep one LR and so flatten discriminative LRs; here every
group trains at its planned LR x m, with m rising exponentially, so the ratios between groups are
those of the plan at every step and the answer is a multiplier for the whole plan. The loss is
smoothed (EMA 0.98, bias-corrected, as fastai), the sweep stops when it exceeds 4x its minimum,
and the suggestion is fastai's "valley": the longest stretch of decreasing loss, 2/3 of the way
in. Model, optimizer, scaler, gradients and every random generator are restored afterwards, bit
for bit, so a range test before training changes nothing about the run that follows.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import tempfile
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from engine.training.batches import single_image_batch_problem
from engine.config import PlanConfig, RunConfig
from engine.data.dataset import DatasetScan
from engine.errors import UserError
from engine.events import Callbacks, TrainingControl
from engine.plan.optimization import Optimization, ScheduleSegment
from engine.plan.plan import apply_plan
from engine.training.setup import set_up
from engine.errors import Stopped

SMOOTHING = 0.98
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its minimum
DEFAULT_STEPS = 100
STEEPEST_SKIP = 5  # the steepest fall is looked for after this many steps (fastai skips the start too)
DEFAULT_START, DEFAULT_END = 1e-4, 1e3  # multipliers of the plan's LRs


@dataclass(frozen=True)
class RangePoint:
    multiplier: float
    lrs: dict[str, float]  # group label -> LR at this step
    loss: float  # smoothed
    raw_loss: float


@dataclass(frozen=True)
class Suggestion:
    multiplier: float
    base_lr: float
    rule: str  # "valley" | "steepest" | "minimum/10"

    def to_dict(self) -> dict:
        return {"multiplier": self.multiplier, "base_lr": self.base_lr, "rule": self.rule}


@dataclass(frozen=True)
class RangeTest:
    curve: tuple[RangePoint, ...]
    base_lr: float
    stopped: str  # "completed" | "diverged" | "user"
    suggestion: Suggestion | None  # None when too few steps ran to tell
    alternatives: tuple[Suggestion, ...]

    def to_dict(self) -> dict:
        return {
            "curve": [{"multiplier": p.multiplier, "lrs": p.lrs, "loss": p.loss, "raw_loss": p.raw_loss}
                      for p in self.curve],
            "suggestion": self.suggestion.to_dict() if self.suggestion else None,
            "alternatives": [s.to_dict() for s in self.alternatives],
            "base_lr": self.base_lr, "stopped": self.stopped,
        }


def multipliers(start: float, end: float, steps: int) -> list[float]:
    if not (0 < start < end and math.isfinite(end)) or steps < 3:
        raise UserError(f"the range test needs 0 < start < end and at least 3 steps, got {start}, {end}, {steps}")
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def scale_plan(config: PlanConfig, multiplier: float) -> PlanConfig:
    """The plan with every LR (base and per-module) times `multiplier`: the ratios stay as they were."""
    edits = tuple(replace(e, lr=e.lr * multiplier) if e.lr is not None else e for e in config.edits)
    return replace(config, base_lr=config.base_lr * multiplier, edits=edits)


# --- the sweep --------------------------------------------------------------------------------


def range_test(module: nn.Module, optimizer: torch.optim.Optimizer,
               train_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
               criterion: nn.Module, base_lr: float, *, steps: int = DEFAULT_STEPS, start: float = DEFAULT_START,
               end: float = DEFAULT_END, scaler: torch.amp.GradScaler | None = None,
               autocast: Callable = contextlib.nullcontext,
               should_stop: Callable[[], bool] = lambda: False, swept_groups: set[int] | None = None) -> RangeTest:
    """Sweep m over [start, end] on `module` with `optimizer`'s groups at their planned LR x m
    (only the groups of index `swept_groups`, if given: the others stay at their planned LR).
    `train_batches(epoch)` gives an epoch's batches (engine.training.batches: images or cached features)."""
    ms = multipliers(start, end, steps)
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    with restored(module, optimizer, scaler):
        curve, stopped = _sweep(module, optimizer, train_batches, criterion, ms, scaler, autocast, should_stop,
                                swept_groups)
    return _result(curve, base_lr, stopped)


def _sweep(module, optimizer, train_batches, criterion, ms, scaler, autocast, should_stop, swept_groups):
    groups = optimizer.param_groups
    planned = [g.get("initial_lr", g["lr"]) for g in groups]  # the plan's LRs, before any schedule
    swept = [swept_groups is None or i in swept_groups for i in range(len(groups))]
    labels = [g.get("group_label", f"group {i}") for i, g in enumerate(groups)]
    module.train()
    stream = _endless(train_batches)
    curve: list[RangePoint] = []
    average, lowest, stopped = 0.0, math.inf, "completed"
    try:
        for i, m in enumerate(ms):
            if should_stop():
                stopped = "user"
                break
            for group, lr, moves in zip(groups, planned, swept):
                group["lr"] = lr * m if moves else lr
            x, y = next(stream)
            with autocast():
                loss = criterion(module(x).float(), y)
            value = loss.item()
            if not math.isfinite(value):
                stopped = "diverged"
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            curve.append(RangePoint(m, {label: g["lr"] for label, g in zip(labels, groups)}, smoothed, value))
            lowest = min(lowest, smoothed)
            if smoothed > DIVERGENCE * lowest:
                stopped = "diverged"
                break
    finally:
        stream.close()
    return curve, stopped


def _endless(train_batches) -> Iterator:
    epoch = 1
    while True:
        empty = True
        for batch in train_batches(epoch):
            empty = False
            yield batch
        if empty:
            raise UserError("the range test has no training batches")
        epoch += 1


# --- the suggestions --------------------------------------------------------------------------


def valley_index(losses: list[float]) -> int:
    """fastai's "valley": the longest decreasing run of the loss (as a longest decreasing
    subsequence, so noise does not cut it short), and the point 2/3 of the way into it."""
    n = len(losses)
    length, previous = [1] * n, [-1] * n
    for i in range(n):
        for j in range(i):
            # >=: of equally long runs, the one starting latest (a flat stretch before the fall is no valley)
            if losses[j] > losses[i] and length[j] + 1 >= length[i]:
                length[i], previous[i] = length[j] + 1, j
    end = max(range(n), key=lambda i: (length[i], -i))
    first = end
    while previous[first] != -1:
        first = previous[first]
    return first + (2 * (end - first)) // 3


def steepest_index(losses: list[float], ms: list[float]) -> int:
    """Where the loss falls fastest per decade of the multiplier, after the first few steps: there
    the smoothed loss rests on a handful of batches, and its first fall is noise, not the LR."""
    slopes = np.gradient(np.asarray(losses), np.log10(np.asarray(ms)))
    skip = min(STEEPEST_SKIP, max(0, len(losses) - 3))  # a short sweep keeps at least a few points
    return skip + int(np.argmin(slopes[skip:]))


def _result(curve: list[RangePoint], base_lr: float, stopped: str) -> RangeTest:
    if len(curve) < 3:
        return RangeTest(tuple(curve), base_lr, stopped, None, ())
    losses, ms = [p.loss for p in curve], [p.multiplier for p in curve]

    def at(m: float, rule: str) -> Suggestion:
        return Suggestion(m, base_lr * m, rule)

    valley = at(ms[valley_index(losses)], "valley")
    steepest = at(ms[steepest_index(losses, ms)], "steepest")
    # A tenth of the multiplier at the lowest loss, kept inside the swept range.
    tenth = at(max(ms[0], ms[int(np.argmin(losses))] / 10), "minimum/10")
    return RangeTest(tuple(curve), base_lr, stopped, valley, (steepest, tenth))


# --- restoring everything ---------------------------------------------------------------------


@contextlib.contextmanager
def restored(module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
    """Put back, bit for bit, everything a sweep changes: weights and buffers, gradients, train
    modes, optimizer state and LRs, the loss scaler, and the torch, CUDA, numpy and Python RNGs."""
    weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in module.named_parameters()}
    modes = {name: m.training for name, m in module.named_modules()}
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    scaler_state = copy.deepcopy(scaler.state_dict())
    rng = random_state()
    try:
        yield
    finally:
        module.load_state_dict(weights)
        for name, p in module.named_parameters():
            p.grad = grads[name]
        for name, m in module.named_modules():
            m.training = modes[name]
        optimizer.load_state_dict(optimizer_state)
        scaler.load_state_dict(scaler_state)
        set_random_state(rng)


def random_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


# --- a range test from a run configuration (the CLI, the window) -------------------------------


def find_lr(config: RunConfig, scan: DatasetScan | None = None, *, steps: int = DEFAULT_STEPS,
            start: float = DEFAULT_START, end: float = DEFAULT_END, module: str | None = None,
            callbacks: Callbacks | None = None, control: TrainingControl | None = None) -> RangeTest:
    """The range test of the plan `config` describes, in force at its first epoch, on the batches
    the trainer would use (cached trunk features when the trunk is frozen). With `module`, only that
    module's LR moves and the suggestion's base_lr is its LR. Nothing is written outside a
    temporary folder, and the caller's random state is left as it was."""
    callbacks, control = callbacks or Callbacks(), control or TrainingControl()
    multipliers(start, end, steps)  # bad numbers fail before any work
    problem = single_image_batch_problem(config)  # as train refuses it: BatchNorm cannot learn from one image
    if problem:
        raise UserError(problem)
    rng = random_state()
    try:
        with tempfile.TemporaryDirectory(prefix="lr-find-") as folder:
            try:
                run = set_up(replace(config, out_dir=folder), scan, callbacks, control, fresh=True)
            except Stopped:
                return RangeTest((), config.plan.base_lr, "user", None, ())
            plan_now = run.plan.at_epoch(0)
            apply_plan(run.model, plan_now)
            segment = ScheduleSegment.planned(config.train, run.batches.steps_per_epoch)
            optimization = Optimization(run.model, run.info, plan_now, config.train, segment)
            criterion = run.task.loss  # the run's own loss: cross-entropy, BCE or the regression loss
            scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)
            optimizer, swept, base_lr = optimization.optimizer, None, run.plan.base_lr
            if module is not None:
                run.info.check_module(module)
                optimizer, swept = module_apart(optimizer, run.model, module)
                base_lr = optimizer.param_groups[min(swept)]["initial_lr"]
            callbacks.on_status("LR range test")
            return range_test(run.batches.module_to_train(run.model, run.info.head), optimizer,
                              run.batches.train_batches, criterion, base_lr, steps=steps, start=start,
                              end=end, scaler=scaler, autocast=run.autocast,
                              should_stop=lambda: control.stop_requested, swept_groups=swept)
    finally:
        set_random_state(rng)


def module_apart(optimizer: torch.optim.Optimizer, model: nn.Module,
                 module: str) -> tuple[torch.optim.Optimizer, set[int]]:
    """A new optimizer of the same kind (and no state yet) in which `module`'s parameters form groups
    of their own, labelled by the module; returns it and those groups' indices."""
    inside = {id(p) for p in model.get_submodule(module).parameters()}
    groups, swept = [], set()
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        outside = [p for p in group["params"] if id(p) not in inside]
        within = [p for p in group["params"] if id(p) in inside]
        if outside:
            groups.append({**settings, "params": outside})
        if within:
            swept.add(len(groups))
            label = settings.get("group_label")
            groups.append({**settings, "params": within,
                           "group_label": module if label in (None, module) else f"{module} (of {label})"})
    if not swept:
        raise UserError(f"'{module}' does not train in the plan's first epoch: nothing to sweep")
    # Each group carries every hyperparameter of the original, so the constructor's defaults matter not.
    return type(optimizer)(groups, lr=optimizer.defaults["lr"]), swept
