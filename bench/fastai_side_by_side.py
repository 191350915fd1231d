#!/usr/bin/env python3
"""Transfer Studio against fastai's `vision_learner` + `fine_tune`, side by side (issue 27).

    .venv/bin/python bench/fastai_side_by_side.py [--rounds 2] [--epochs 3] [--size 64] [--out bench/out]

fastai lives in the benchmark's own environment (bench/.fastai-venv, made on first use with the
project's torch and torchvision versions and fastai from the package index), never in the project's.
Same data (scikit-learn's digits, train/ and val/), the same stand-in resnet18 weights, image size and
batch size. `fine_tune(E)` trains E + 1 epochs (one with the head alone first); ours trains as many:
`train --strategy discriminative --epochs E+1 --augment none` with its defaults otherwise. Each side is
its own process timed whole, back to back per round. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import venv
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as rb  # noqa: E402 - whole-process timing, the data, the stand-in weights

VENV = rb.ROOT / "bench" / ".fastai-venv"


def fastai_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.create(VENV, with_pip=True)
        versions = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *versions, "fastai"], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="fine_tune's epochs (ours trains one more)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default=str(rb.ROOT / "bench" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    digits, weights = rb.digits_dataset(out / "digits"), rb.weights_file(out / "resnet18-weights.pth")
    python = fastai_python()
    runs = []
    for _ in range(args.rounds):
        seconds, line = rb.timed([str(python), "bench/fastai_loop.py", "--data", str(digits), "--weights", str(weights),
                                  "--epochs", str(args.epochs), "--size", str(args.size), "--batch-size", "32"])
        runs.append({"side": "fastai", "seconds": round(seconds, 1), "val_accuracy": json.loads(line)["val_accuracy"]})
        print(json.dumps(runs[-1]), flush=True)
        seconds, _, records = rb.ours(digits, out / "run-vs-fastai", [
            "--weights", str(weights), "--strategy", "discriminative", "--epochs", str(args.epochs + 1),
            "--image-size", str(args.size)])
        runs.append({"side": "Transfer Studio", "seconds": round(seconds, 1), "val_accuracy": records[-1].val_accuracy})
        print(json.dumps(runs[-1]), flush=True)
    fastai_seconds = statistics.median(r["seconds"] for r in runs if r["side"] == "fastai")
    print("| side | whole process (median) | of fastai's | val accuracy |\n|---|---|---|---|")
    for side in ("fastai", "Transfer Studio"):
        mine = [r for r in runs if r["side"] == side]
        seconds = statistics.median(r["seconds"] for r in mine)
        accuracies = ", ".join(f"{r['val_accuracy']:.3f}" for r in mine)
        print(f"| {side} | {seconds:.1f} s | {seconds / fastai_seconds:.2f} | {accuracies} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
