"""The machine's devices as the window offers and names them: the device choices, and which device
and precision a run of the shown training settings will use (by the engine's own rule)."""

from __future__ import annotations

import os

import torch

from engine.model.devices import resolve_precision

PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def available_devices() -> list[tuple[str, str, int]]:
    """(label, device, processes): this process's devices, then runs of several processes (DDP)."""
    devices = [("Auto", "auto", 1), ("CPU", "cpu", 1)]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(gpus):
        devices.append((f"cuda:{i} — {torch.cuda.get_device_name(i)}", f"cuda:{i}", 1))
    if (os.cpu_count() or 1) >= 2:
        devices.append(("CPU — 2 processes (DDP)", "cpu", 2))
    if gpus >= 2:
        devices.append((f"{gpus} GPUs — a process each (DDP)", "cuda", gpus))
    return devices


def device_status(device: str, precision: str, processes: int) -> tuple[str, str]:
    """The status bar's device line and mixed-precision line for these training settings."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    amp = resolve_precision(precision, torch.device(device))  # the rule the run will follow
    return (f"Device: {name}" + (f" × {processes} processes (DDP)" if processes > 1 else ""),
            f"Mixed precision: {PRECISION_NAMES.get(amp, 'off')}")
