#!/usr/bin/env python3
"""Where a default run and the benchmark part ways (issue 27): the reference fine-tuning recipe
(3 epochs at 64 px on the digits, per-stage LRs, AdamW), each variant its own whole process, back to back.

    .venv/bin/python bench/defaults_gap.py [--rounds 2] [--variants NAME,...] [--out bench/out]
    .venv/bin/python bench/defaults_gap.py --epochs 5 --size 32 --variants plain-0,ours   # the seed's recipe

Variants:
  plain-0          the tutorial loop with no DataLoader workers (as the issue ran it)
  plain-2          the tutorial loop with 2 workers (as bench/run_benchmarks.py runs it)
  ours             the defaults but --augment none (the plain loop does not augment either)
  ours-constant    ... --schedule constant (round 2's benchmark flag)
  ours-no-telemetry, ours-no-tensorboard
  ours-augment     ... with the CLI's default augmentation (standard) as well
Prints a JSON line per process and a markdown table (medians): whole-process seconds, the mean of
the epochs after the first, validation accuracy. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as rb  # noqa: E402 - whole-process timing, the data, the stand-in weights

EXTRA = {"ours": [], "ours-constant": ["--schedule", "constant"], "ours-no-telemetry": ["--no-telemetry"],
         "ours-no-tensorboard": ["--no-tensorboard"], "ours-augment": ["--augment", "standard"]}
PLAIN_WORKERS = {"plain-0": 0, "plain-2": 2}


def run(variant: str, digits: Path, weights: Path, out: Path, epochs: int, size: int) -> dict:
    if variant in PLAIN_WORKERS:
        seconds, line = rb.timed([sys.executable, "bench/plain_loop.py", "--data", str(digits), "--mode", "ft",
                                  "--weights", str(weights), "--epochs", str(epochs), "--size", str(size),
                                  "--batch-size", "32",
                                  "--workers", str(PLAIN_WORKERS[variant])])
        result = json.loads(line)
        epoch_seconds, accuracy = [e["seconds"] for e in result["epochs"]], result["val_accuracy"]
    else:
        seconds, _, records = rb.ours(digits, out / f"run-{variant}", ["--weights", str(weights), "--strategy",
                                                                       "fine-tune", "--epochs", str(epochs),
                                                                       "--image-size", str(size), *rb.RECIPE,
                                                                       *EXTRA[variant]])
        epoch_seconds, accuracy = [r.seconds for r in records], records[-1].val_accuracy
    return {"variant": variant, "seconds": round(seconds, 2), "later_epoch_seconds": round(statistics.mean(epoch_seconds[1:]), 2),
            "val_accuracy": accuracy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join([*PLAIN_WORKERS, *EXTRA]))
    parser.add_argument("--out", default=str(rb.ROOT / "bench" / "out"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    out = Path(args.out)
    digits, weights = rb.digits_dataset(out / "digits"), rb.weights_file(out / "resnet18-weights.pth")
    runs = []
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            runs.append(run(variant, digits, weights, out, args.epochs, args.size))
            print(json.dumps(runs[-1]), flush=True)
    plain = statistics.median(r["seconds"] for r in runs if r["variant"] == "plain-0") if any(
        r["variant"] == "plain-0" for r in runs) else None
    print("| variant | whole process (median) | of plain-0 | later epochs | val accuracy |\n|---|---|---|---|---|")
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        seconds = statistics.median(r["seconds"] for r in mine)
        ratio = f"{seconds / plain:.3f}" if plain else ""
        later = statistics.median(r["later_epoch_seconds"] for r in mine)
        accuracies = ", ".join(f"{r['val_accuracy']:.3f}" for r in mine)
        print(f"| {variant} | {seconds:.1f} s | {ratio} | {later:.2f} s | {accuracies} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
