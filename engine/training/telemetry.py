"""Per-layer telemetry: how much each module of the tree's first two levels actually changes.

On sampled optimizer steps (about two a second, never every step: W&B's `watch` hooks every
parameter and had to raise its default interval for speed), per module:
- grad_norm: the L2 norm of its gradients, unscaled when fp16 loss scaling is on;
- update_ratio: ||theta_after - theta_before|| / ||theta_before||, read around `optimizer.step()`
  (AdamW's update is not lr * grad); exactly 0 for a frozen module;
- zero_grad_fraction: the share of its parameters whose gradient is exactly 0 (1 when frozen).

A sample copies the trainable parameters once (for the update) and syncs with the device once.
Its cost is measured, and the next sample waits long enough to keep the overhead under
`max_overhead` of training time. An epoch reports the mean of its samples; the last step of an
epoch without a sample is sampled, so even millisecond epochs (cached features) report.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from engine.events import LayerStats
from engine.listener import Listener


def telemetry_modules(model: nn.Module) -> dict[str, list[str]]:
    """Module name (depth 1 and 2 of the tree) -> names of the parameters it holds."""
    params = [name for name, _ in model.named_parameters()]
    modules: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        if module_name and module_name.count(".") <= 1 and any(True for _ in module.parameters()):
            prefix = module_name + "."
            modules[module_name] = [p for p in params if p.startswith(prefix)]
    return modules


class Telemetry(Listener):
    def __init__(self, model: nn.Module, scaler: torch.amp.GradScaler, steps_per_epoch: int,
                 interval_seconds: float = 0.5, max_overhead: float = 0.02) -> None:
        self.scaler = scaler
        self.steps_per_epoch = steps_per_epoch
        self.interval_seconds = interval_seconds
        self.max_overhead = max_overhead
        self.params = dict(model.named_parameters())
        self.modules = telemetry_modules(model)
        self._last_sample_at = -float("inf")
        self._last_cost = 0.0
        self._step_in_epoch = 0
        self._sampling = False
        self._cost_before_step = 0.0
        self._before: dict[str, torch.Tensor] = {}
        self._grad_figures: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._epoch_samples: list[dict[str, LayerStats]] = []
        self._unreported: dict[str, LayerStats] = {}

    # --- sampling decision ------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, plan) -> None:
        self._step_in_epoch = 0
        self._epoch_samples = []

    def _due(self, now: float) -> bool:
        last_of_epoch = self._step_in_epoch == self.steps_per_epoch
        if last_of_epoch and not self._epoch_samples:
            return True
        gap = max(self.interval_seconds, self._last_cost / self.max_overhead)
        return now - self._last_sample_at >= gap

    # --- around the optimizer step ------------------------------------------------------------

    def on_before_optimizer_step(self) -> None:
        self._step_in_epoch += 1
        started = time.perf_counter()
        self._sampling = self._due(started)
        if not self._sampling:
            return
        with torch.no_grad():
            trainable = {n: p for n, p in self.params.items() if p.requires_grad}
            self._before = {n: p.detach().clone() for n, p in trainable.items()}
            self._grad_figures = {
                n: (p.grad.detach().float().pow(2).sum(), (p.grad == 0).sum())
                for n, p in trainable.items() if p.grad is not None}
        self._cost_before_step = time.perf_counter() - started

    def on_after_optimizer_step(self) -> None:
        if not self._sampling:
            return
        started = time.perf_counter()
        stats = self._measure()
        self._before, self._grad_figures = {}, {}
        self._epoch_samples.append(stats)
        self._unreported = stats
        finished = time.perf_counter()
        self._last_cost = self._cost_before_step + (finished - started)
        self._last_sample_at = finished

    @torch.no_grad()
    def _measure(self) -> dict[str, LayerStats]:
        names = list(self.params)
        index = {n: i for i, n in enumerate(names)}
        zero = torch.zeros((), device=next(iter(self.params.values())).device)
        weight_sq, delta_sq, grad_sq, zero_grads = [], [], [], []
        for n in names:
            p = self.params[n].detach()
            before = self._before.get(n)
            # The denominator is the weight before the step; a frozen tensor did not move.
            reference = before if before is not None else p
            weight_sq.append(reference.float().pow(2).sum())
            delta_sq.append((p.float() - before.float()).pow(2).sum() if before is not None else zero)
            g_sq, g_zero = self._grad_figures.get(n, (zero, None))
            grad_sq.append(g_sq)
            zero_grads.append(g_zero.to(zero.dtype) if g_zero is not None else zero + p.numel())
        # One transfer, one wait for the device, per sample.
        figures = torch.stack([torch.stack(weight_sq), torch.stack(delta_sq), torch.stack(grad_sq),
                               torch.stack(zero_grads)]).double().cpu()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        numel = [self.params[n].numel() for n in names]
        stats = {}
        for module, members in self.modules.items():
            rows = [index[n] for n in members]
            w = float(figures[0, rows].sum()) ** 0.5
            d = float(figures[1, rows].sum()) ** 0.5
            g = float(figures[2, rows].sum()) ** 0.5 / scale
            zeros = float(figures[3, rows].sum())
            total = sum(numel[r] for r in rows)
            stats[module] = LayerStats(grad_norm=g, update_ratio=d / w if w > 0 else 0.0,
                                       zero_grad_fraction=zeros / total if total else 1.0)
        return stats

    # --- what the events carry ----------------------------------------------------------------

    def take_latest(self) -> dict[str, LayerStats]:
        """The newest sample not yet sent with a batch event (empty when none)."""
        latest, self._unreported = self._unreported, {}
        return latest

    def epoch_means(self) -> dict[str, LayerStats]:
        if not self._epoch_samples:
            return {}
        n = len(self._epoch_samples)
        return {module: LayerStats(
            grad_norm=sum(s[module].grad_norm for s in self._epoch_samples) / n,
            update_ratio=sum(s[module].update_ratio for s in self._epoch_samples) / n,
            zero_grad_fraction=sum(s[module].zero_grad_fraction for s in self._epoch_samples) / n)
            for module in self.modules}
