"""The machine's devices as the window offers and names them: the device choices, and which device
and precision a run of the shown training settings will use (by the engine's own rule)."""

from __future__ import annotations

import os

import torch

from engine.model.devices import device_name, mps_available, resolve_precision

# The engine names a run's precision by its dtype ("bfloat16"); the window by its Precision box's words.
PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16"}


# What Apple's GPU leaves to the CPU, or not done at all, in this program: the entry's tooltip says so.
MPS_NOTE = ("Training runs on Apple's GPU (Metal); export, its parity checks, Try an image and the "
            "suspects search stay on the CPU. Mixed precision Auto is off (fp32) there; several processes (DDP) "
            "are for CPUs and CUDA GPUs only; an operator Metal lacks stops the run unless "
            "PYTORCH_ENABLE_MPS_FALLBACK=1 lets the CPU compute it.")


def available_devices() -> list[tuple]:
    """(label, device, processes[, note]): this process's devices, then runs of several processes (DDP)."""
    devices: list[tuple] = [("Auto", "auto", 1), ("CPU", "cpu", 1)]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(gpus):
        devices.append((f"cuda:{i} — {torch.cuda.get_device_name(i)}", f"cuda:{i}", 1))
    if mps_available():
        devices.append(("Apple GPU (mps)", "mps", 1, MPS_NOTE))
    if (os.cpu_count() or 1) >= 2:
        devices.append(("CPU — 2 processes (DDP)", "cpu", 2))
    if gpus >= 2:
        devices.append((f"{gpus} GPUs — a process each (DDP)", "cuda", gpus))
    return devices


def device_status(device: str, precision: str, processes: int) -> tuple[str, str]:
    """The status bar's device line and mixed-precision line for these training settings."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "CPU" if device == "cpu" else device_name(torch.device(device))
    amp = resolve_precision(precision, torch.device(device))  # the rule the run will follow
    return (f"Device: {name}" + (f" × {processes} processes (DDP)" if processes > 1 else ""),
            precision_line(str(amp).replace("torch.", "") if amp is not None else "fp32"))


def precision_line(precision: str) -> str:
    """The status bar's mixed-precision line for a precision as the engine names it ("bfloat16",
    "float16", "fp32"): the same words before Start and once the run says what it uses."""
    return f"Mixed precision: {PRECISION_NAMES.get(precision, 'off' if precision == 'fp32' else precision)}"
