#!/usr/bin/env python3
"""Feature extraction with augmentation: Transfer Studio's cached augmented views against the plain
loop trained with the same augmentation ("standard": random resized crop + flip).

    .venv/bin/python bench/augmented_features.py [--pairs 2] [--out bench/out]
    .venv/bin/python bench/augmented_features.py --data DIR --epochs 1 --size 32   # a smoke run

Default case (issue 13): 10 epochs at 96 px, resnet18 from a weights file, scikit-learn's digits.
Each pair runs the plain loop, then Transfer Studio with V cached views (the defaults: 3 views, --adapt-norm
auto), then the same with --adapt-norm off, back to back, each as its own process timed whole (bench/run_benchmarks.py's
timed(): a fresh, empty feature cache folder per process). Prints one JSON line per run and a
markdown table for docs/benchmarks.md; writes OUT/augmented_features.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as rb  # noqa: E402 - the round-1 pieces: data, weights file, whole-process timing
from engine.config import TrainConfig  # noqa: E402 - importable once run_benchmarks added the root
from engine.runs.run_folder import RunFolder  # noqa: E402

FE_ARGS = ["--strategy", "feature-extraction"]  # otherwise the defaults (AdamW, cosine, the head's LR, --adapt-norm auto)


def plain_run(data: Path, weights: Path, args) -> dict:
    seconds, line = rb.timed([sys.executable, "bench/plain_loop.py", "--data", str(data), "--mode", "fe",
                              "--weights", str(weights), "--epochs", str(args.epochs), "--size", str(args.size),
                              "--workers", str(args.plain_workers), "--batch-size", "32", "--augment", "standard"])
    return {"side": "plain loop", "seconds": seconds, "val_accuracy": json.loads(line)["val_accuracy"]}


def ours_run(data: Path, weights: Path, out: Path, args, adapt_norm: str) -> dict:
    extra = ["--adapt-norm", adapt_norm]
    seconds, summary, metrics = rb.ours(data, out, ["--weights", str(weights), *FE_ARGS, "--augment", "standard",
                                                    "--feature-views", str(args.views), "--epochs", str(args.epochs),
                                                    "--image-size", str(args.size), *extra])
    record = RunFolder(out).read_run()
    side = f"Transfer Studio, {args.views} views, --adapt-norm {adapt_norm}"
    return {"side": side, "seconds": seconds, "val_accuracy": metrics[-1].val_accuracy,
            "best_val_accuracy": summary["best_val_accuracy"], "feature_cache": record.feature_cache,
            "precision": record.precision}


def table(runs: list[dict]) -> str:
    sides = list(dict.fromkeys(r["side"] for r in runs))
    plain = statistics.median(r["seconds"] for r in runs if r["side"] == "plain loop")
    lines = ["| side | seconds (median) | speed vs plain | val accuracy (last; best) | runs |", "|---|---|---|---|---|"]
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        seconds = statistics.median(r["seconds"] for r in mine)
        accuracy = ", ".join(f"{r['val_accuracy']:.3f}" + (f" ({r['best_val_accuracy']:.3f})" if "best_val_accuracy"
                                                           in r else "") for r in mine)
        speed = "1.0×" if side == "plain loop" else f"**{plain / seconds:.1f}×**"
        lines.append(f"| {side} | {seconds:.1f} s | {speed} | {accuracy} | {len(mine)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(rb.ROOT / "bench" / "out"))
    parser.add_argument("--data", help="a folder with train/ and val/ (default: scikit-learn's digits at 96 px)")
    parser.add_argument("--pairs", type=int, default=1, help="plain/ours rounds, run back to back")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--views", type=int, default=TrainConfig().feature_views, help="default: train's default")
    parser.add_argument("--no-adabn", action="store_true", help="skip the --adapt-norm off variant")
    parser.add_argument("--plain-workers", type=int, default=2,
                        help="the plain loop's DataLoader workers (0: as issue 27's tester ran it)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(rb.ROOT)
    data = Path(args.data) if args.data else rb.digits_dataset(out / "digits")
    weights = rb.weights_file(out / "resnet18-weights.pth")
    runs = []
    for pair in range(args.pairs):
        runs.append(plain_run(data, weights, args))
        print(json.dumps(runs[-1]), flush=True)
        for adapt in ("auto",) if args.no_adabn else ("auto", "off"):
            runs.append(ours_run(data, weights, out / f"run-augfe-{pair}-{adapt}", args, adapt))
            print(json.dumps(runs[-1]), flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    (out / "augmented_features.json").write_text(json.dumps({"machine": machine, "args": vars(args), "runs": runs},
                                                            indent=2))
    print(f"\n{machine}; {args.epochs} epochs at {args.size} px, augmentation 'standard', {data}\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
