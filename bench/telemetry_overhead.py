#!/usr/bin/env python3
"""What per-layer telemetry costs: the same training with telemetry on and off, in pairs.

    .venv/bin/python bench/telemetry_overhead.py [--pairs 5] [--epochs 2] [--size 64] [--device cpu]

Fine-tunes resnet18 (every layer trains, the most telemetry can cost: every parameter is copied
on a sampled step) on the built-in demo dataset, from random init, without augmentation noise
in the timing (same seed, same data). Each pair runs off then on (order alternating between
pairs) in this one process, so both see the same machine state; the overhead is the median of
the per-pair ratios of the training loop's own time (FitResult.images_per_second, which excludes
set-up and validation), and how many batch events carried a telemetry sample. Prints one JSON
line. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig  # noqa: E402
from engine.data.demo import ensure_demo_dataset  # noqa: E402
from engine.events import Callbacks  # noqa: E402
from engine.training.trainer import fit  # noqa: E402


class TelemetryCounter(Callbacks):
    def __init__(self) -> None:
        self.sampled_batch_events = 0

    def on_batch_end(self, event) -> None:
        self.sampled_batch_events += bool(event.layers)


def one_run(config: RunConfig, telemetry: bool, out: Path) -> dict:
    counter = TelemetryCounter()
    cfg = replace(config, train=replace(config.train, telemetry=telemetry), out_dir=str(out))
    started = time.perf_counter()
    result = fit(cfg, counter)
    return {"images_per_second": result.images_per_second, "wall": time.perf_counter() - started,
            "sampled_batch_events": counter.sampled_batch_events}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    config = RunConfig(
        data=DataConfig(root=str(ensure_demo_dataset()), image_size=args.size, augment="none", feature_cache=False),
        model=ModelConfig("resnet18", "none"), plan=PlanConfig(strategy="fine-tune"),
        train=TrainConfig(epochs=args.epochs, batch_size=32, device=args.device, seed=0))
    work = Path(tempfile.mkdtemp(prefix="ts-telemetry-"))
    one_run(config, True, work / "warm-up")  # first-run costs (allocator, oneDNN kernels) out of the pairs
    ratios, on_runs, off_runs = [], [], []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        runs = {flag: one_run(config, flag, work / f"{pair}-{flag}") for flag in order}
        off_runs.append(runs[False])
        on_runs.append(runs[True])
        # Overhead in training time: time per image with telemetry over time per image without.
        ratios.append(runs[False]["images_per_second"] / runs[True]["images_per_second"] - 1.0)
    print(json.dumps({
        "bench": "telemetry_overhead", "model": "resnet18", "strategy": "fine-tune (every layer trains)",
        "image_size": args.size, "epochs": args.epochs, "pairs": args.pairs, "device": args.device,
        "threads": torch.get_num_threads(),
        "overhead_median": round(statistics.median(ratios), 4),
        "overhead_per_pair": [round(r, 4) for r in ratios],
        "images_per_second_off": round(statistics.median(r["images_per_second"] for r in off_runs), 1),
        "images_per_second_on": round(statistics.median(r["images_per_second"] for r in on_runs), 1),
        "sampled_batch_events_per_run": on_runs[0]["sampled_batch_events"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
