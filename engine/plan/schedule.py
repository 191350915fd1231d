"""Learning-rate schedules as pure functions of the step.

The trainer sets every group's LR to `initial_lr * lr_factor(step)` itself instead of using a
torch LR scheduler, because gradual unfreezing adds param groups mid-run (torch schedulers fix
their group list at construction) and a pure function also previews the whole run's LRs.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of a group's LR at `step` (0-based) of `total_steps`."""
    total_steps = max(1, total_steps)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        # Ramp from 1/25 of the peak over the first 30 % (or the warm-up), then cosine to 1e-4 of it.
        rise = warmup_steps or max(1, int(0.3 * total_steps))
        if step < rise:
            return 0.04 + 0.96 * step / rise
        progress = min(1.0, (step - rise) / max(1, total_steps - rise))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
