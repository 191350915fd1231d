"""The plan: per-module frozen/LR settings with inheritance, norm-layer modes, optimizer param groups, presets and LR schedules."""
