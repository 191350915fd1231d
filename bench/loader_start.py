#!/usr/bin/env python3
"""What starting DataLoader workers costs, by start method (issue 28).

    .venv/bin/python bench/loader_start.py [--reps 3] [--workers 1 2] [--per-class 32] [--size 64]

Each start method runs in a fresh Python process (so "cold" includes what a process pays once:
the forkserver's own start, with or without its preload), which builds `--reps` loaders one after
another through engine.data.dataset on a generated dataset (engine.data.demo) and times each
one's first batch: the first is "cold", the others "warm" (a process that already started
workers once, such as the window's second LR sweep or the features pass of each augmented view).
"next epoch" is iterating the last loader again: its persistent workers are already up.
Prints a table of seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, start method, forkserver preloads engine.data.dataset)
METHODS = (("fork", "fork", True), ("forkserver", "forkserver", True),
           ("forkserver, no preload", "forkserver", False), ("spawn", "spawn", True))


def measure(data: str, method: str, preload: bool, workers: int, reps: int) -> dict:
    """In this process: the first-batch seconds of `reps` new loaders, then of a next epoch."""
    import engine.data.dataset as datasets

    datasets.worker_start_method = lambda: method  # what make_loader's workers start with here
    if not preload:
        datasets.FORKSERVER_PRELOAD[:] = ["__main__"]  # Python's own default
    scan = datasets.scan_dataset(data)
    cache = datasets.DecodedCache(2**28)
    cache.warm(scan.train, 64)  # as a run does before its loaders start
    dataset = datasets.ImageDataset(scan.train, 64, datasets.eval_transform(56), cache)
    firsts, loader = [], None
    for _ in range(reps):
        loader = None  # the previous loader's workers end before the next ones start
        loader = datasets.make_loader(dataset, 16, True, workers, seed=0)
        firsts.append(_first_batch_seconds(loader))
    return {"firsts": firsts, "next_epoch": _first_batch_seconds(loader)}


def _first_batch_seconds(loader) -> float:
    started = time.perf_counter()
    next(iter(loader))
    return time.perf_counter() - started


def in_fresh_process(data: str, method: str, preload: bool, workers: int, reps: int) -> dict:
    command = [sys.executable, __file__, "--measure", data, method, str(int(preload)), str(workers), str(reps)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--per-class", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)  # the child's part
    args = p.parse_args()
    if args.measure:
        data, method, preload, workers, reps = args.measure
        print(json.dumps(measure(data, method, preload == "1", int(workers), int(reps))))
        return
    from engine.data.demo import write_demo_dataset

    available = multiprocessing.get_all_start_methods()
    with tempfile.TemporaryDirectory() as tmp:
        data = str(write_demo_dataset(Path(tmp) / "shapes", classes=4, per_class=args.per_class, size=args.size))
        print(f"{os.cpu_count()} CPUs, {4 * args.per_class} images of {args.size} px, batch 16, "
              f"{args.reps} loaders per process; seconds to the first batch")
        print(f"{'start method':<24}{'workers':>8}{'cold':>8}{'warm med':>10}{'warm max':>10}{'next epoch':>12}")
        for label, method, preload in METHODS:
            if method not in available:
                continue
            for workers in args.workers:
                got = in_fresh_process(data, method, preload, workers, args.reps)
                warm = got["firsts"][1:] or [float("nan")]
                print(f"{label:<24}{workers:>8}{got['firsts'][0]:>8.2f}{statistics.median(warm):>10.2f}"
                      f"{max(warm):>10.2f}{got['next_epoch']:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
