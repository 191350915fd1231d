#!/usr/bin/env python3
"""Training throughput with 1 and with N processes (train --nproc N), same config, same global batch.

    .venv/bin/python bench/distributed.py [--nproc 2] [--epochs 3] [--size 64] [--batch-size 32]
                                          [--device cpu] [--repeats 2] [--multi-process-flags=--sync-bn]

Fine-tunes resnet18 from random init (every layer trains: the most gradient traffic DDP has to
all-reduce) on the built-in demo dataset without augmentation, through the real command line, so
the N-process side pays what a person pays: torchrun's launcher, the process group, DDP. Reports
per run the training images/s of the loop (FitResult.images_per_second: the images of all ranks
per second of training, set-up and validation left out), the whole command's wall time and the
last epoch's validation accuracy; runs alternate 1, N, 1, N... so both see the same machine
state. Prints one JSON line. On CPU each process gets cores / N threads. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.runs.run_folder import RunFolder  # noqa: E402


def one_run(args, nproc: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))} if args.device == "cpu" else dict(os.environ)
    command = [sys.executable, "-m", "app", "train", "--model", "resnet18", "--weights", "none",
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--image-size", str(args.size),
               "--augment", "none", "--device", args.device, "--no-telemetry", "--out", str(out), "--json"]
    if nproc > 1:
        command += ["--nproc", str(nproc), *args.multi_process_flags.split()]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench/distributed.py: {nproc} process(es) failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    last = RunFolder(out).read_epochs()[-1]
    return {"processes": nproc, "images_per_second": summary["images_per_second"], "wall_seconds": round(wall, 2),
            "val_accuracy": last.val_accuracy}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--multi-process-flags", default="",
                        help="more train flags for the N-process side only, e.g. --sync-bn (CUDA)")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for nproc in (1, args.nproc):
                runs.append(one_run(args, nproc, Path(tmp) / f"run-{nproc}-{repeat}"))
    median = {n: statistics.median(r["images_per_second"] for r in runs if r["processes"] == n)
              for n in (1, args.nproc)}
    print(json.dumps({"config": vars(args), "runs": runs, "median_images_per_second": median,
                      "speedup": median[args.nproc] / median[1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
