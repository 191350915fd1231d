#!/usr/bin/env python3
"""Does caching a frozen *prefix* pay? resnet18, stages conv1..layer2 frozen, layer3..fc trained.

    .venv/bin/python bench/prefix_cache.py [--size 96] [--device cpu]

Times one training step (batch 32) two ways: the whole network with the prefix frozen (autograd
already skips the prefix's backward), and the trained suffix alone on stored layer2 outputs.
Prints ms per step for both and the memory one cached image would take.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from torch import nn


def step_time(fn, repeats: int = 10, warmup: int = 3, device: str = "cpu") -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(args.device)
    prefix = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2)
    suffix = nn.Sequential(model.layer3, model.layer4, model.avgpool, nn.Flatten(), model.fc)
    for param in prefix.parameters():
        param.requires_grad_(False)
    prefix.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    with torch.no_grad():
        cached = prefix(x)

    def full():
        optimizer.zero_grad()
        nn.functional.cross_entropy(suffix(prefix(x)), y).backward()
        optimizer.step()

    def from_cache():
        optimizer.zero_grad()
        nn.functional.cross_entropy(suffix(cached), y).backward()
        optimizer.step()

    full_ms = step_time(full, device=args.device)
    cached_ms = step_time(from_cache, device=args.device)
    per_image = cached[0].numel() * 4
    print(json.dumps({"size": args.size, "batch": args.batch, "device": args.device,
                      "full_step_ms": round(full_ms, 1), "cached_prefix_step_ms": round(cached_ms, 1),
                      "speedup": round(full_ms / cached_ms, 2), "cached_bytes_per_image": per_image,
                      "cached_shape": list(cached.shape[1:])}))


if __name__ == "__main__":
    main()
