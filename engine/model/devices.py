"""Devices and precision: which device a spec names, its readable name, and the autocast dtype."""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from engine.errors import UserError


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}' (use auto, cpu, cuda[:N] or mps)") from None
    if device.type == "mps":
        if not mps_available():
            raise UserError("Apple's GPU (mps) was asked for but this machine has none that torch can use (use cpu)")
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("CUDA was asked for but no CUDA device is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"no {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"unsupported device '{spec}' (use auto, cpu, cuda[:N] or mps)")
    return device


def mps_available() -> bool:
    """Apple's GPU (Metal Performance Shaders) is there and this torch was built for it."""
    return bool(torch.backends.mps.is_available())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. "auto": bf16 (fp16 where CUDA lacks it) on
    CUDA; bf16 on a CPU that computes it natively (1.4-1.9x a resnet18 step here), fp32 on others,
    where oneDNN would emulate bf16 more slowly than fp32, and on Apple's GPU (mps)."""
    if spec in ("off", "fp32"):
        return None
    if spec == "auto" and device.type == "mps":
        return None  # Metal's autocast covers fewer operators and depends on the macOS version: fp32 unless asked
    if spec == "auto" and device.type != "cuda":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if spec == "fp16" or (spec == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """oneDNN's own check (bf16 kernels usable) and a bf16 instruction set (AVX512-BF16, AMX or
    Arm's BF16): oneDNN also accepts plain AVX-512, where it emulates bf16 and gains nothing."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch without these checks: stay in fp32
        return False
    return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


@contextlib.contextmanager
def one_thread(device: torch.device | None = None):
    """Hundreds of steps on small matrices (a probe, a head on cached features): a thread pool costs
    more in hand-offs than the arithmetic, and on a machine shared with other processes a second
    thread waits for a core at every operation. Only CPU work is affected (`device`: nothing on a GPU)."""
    if device is not None and device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
