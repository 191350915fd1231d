#!/usr/bin/env python3
"""Where a fine-tuning step's time goes on this CPU, and what each candidate changes (issue 27).

    .venv/bin/python bench/step_profile.py [--size 64] [--batch 32] [--steps 15] [--compile]

resnet18, every layer training, AdamW (fused, as `train` runs it) with the reference recipe's six
LR groups, cross-entropy on random images and labels. For each variant: the median of --steps steps
of forward, backward and optimizer time (after 3 warm-up steps), in ms. Variants: NCHW and
channels-last in fp32; bf16 autocast where the CPU has native bf16 (else timed once, to show the cost
of emulating it); with --compile, torch.compile's step and its first-step (compile) time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.model.devices import cpu_has_native_bf16  # noqa: E402

GROUPS = (("conv1", 1e-5), ("bn1", 1e-5), ("layer1", 1e-5), ("layer2", 5e-5), ("layer3", 1e-4), ("layer4", 5e-4),
          ("fc", 1e-3))


def model_and_optimizer(channels_last: bool):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = [{"params": list(getattr(model, name).parameters()), "lr": lr} for name, lr in GROUPS]
    return model, torch.optim.AdamW(groups, weight_decay=0.01, fused=True)


def timed_steps(model, optimizer, x, y, steps: int, bf16: bool, warmup: int = 3) -> dict:
    phases = {"forward": [], "backward": [], "optimizer": []}
    model.train()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= warmup:
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(seconds)
    result = {name: round(1000 * statistics.median(values), 1) for name, values in phases.items()}
    result["step"] = round(sum(result.values()), 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    native = cpu_has_native_bf16()
    variants = [("fp32, NCHW", False, False), ("fp32, channels-last", True, False),
                ("bf16 autocast, channels-last" + ("" if native else " (emulated)"), True, True)]
    for name, channels_last, bf16 in variants:
        model, optimizer = model_and_optimizer(channels_last)
        xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        steps = args.steps if (native or not bf16) else 1
        print(json.dumps({"variant": name, **timed_steps(model, optimizer, xs, y, steps, bf16, warmup=1 if steps == 1
                                                          else 3)}), flush=True)
    if args.compile:
        model, optimizer = model_and_optimizer(True)
        compiled = torch.compile(model)
        xs = x.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        timed_steps(compiled, optimizer, xs, y, steps=1, bf16=False, warmup=0)
        first = time.perf_counter() - started
        print(json.dumps({"variant": "torch.compile, fp32, channels-last", "first_step_seconds": round(first, 1),
                          **timed_steps(compiled, optimizer, xs, y, args.steps, bf16=False)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
