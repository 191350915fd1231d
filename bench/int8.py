#!/usr/bin/env python3
"""int8 ONNX against fp32 ONNX on this CPU: top-1 on the validation images and images/s, for resnet18 and
a mobile net at two image sizes, each a short fine-tuning run on the real handwritten digits.

    .venv/bin/python bench/int8.py [--out bench/out] [--epochs 2]

What is timed is the product's own `export --int8` report (both files on onnxruntime's CPU provider,
one batch of validation images, best of several runs); `--max-drop 100` keeps every file so each
figure is reported even where the gate would refuse it. Prints one JSON line a case and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_benchmarks import digits_dataset, weights_file  # noqa: E402

CASES = (("resnet18", 64), ("resnet18", 128), ("mobilenet_v3_small", 64), ("mobilenet_v3_small", 128))


def cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_CACHE": tempfile.mkdtemp(prefix="ts-int8-")}
    proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--arch", action="append", help="only these architectures (default: both)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = digits_dataset(out / "digits")
    resnet_weights = weights_file(out / "resnet18-weights.pth")
    rows = []
    for arch, size in CASES:
        if args.arch and arch not in args.arch:
            continue
        run = out / f"int8-{arch}-{size}"
        shutil.rmtree(run, ignore_errors=True)
        weights = str(resnet_weights) if arch == "resnet18" else "none"
        cli("train", "--data", str(digits), "--model", arch, "--weights", weights, "--strategy", "fine-tune",
            "--epochs", str(args.epochs), "--image-size", str(size), "--device", "cpu", "--out", str(run))
        reports = json.loads(cli("export", str(run / "checkpoint.pt"), "--format", "onnx", "--int8",
                                 "--max-drop", "100", "--json"))
        int8 = next(r for r in reports if r.get("format") == "onnx-int8")
        row = {"arch": arch, "image_size": size, "fp32_accuracy": int8["fp32_accuracy"],
               "int8_accuracy": int8["int8_accuracy"], "accuracy_drop_points": int8["accuracy_drop"],
               "speedup": int8["speedup"], **{k: int8[k] for k in ("fp32_images_per_second", "int8_images_per_second")
                                               if k in int8}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| model | px | fp32 top-1 | int8 top-1 | drop (points) | int8 speed-up |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['image_size']} | {r['fp32_accuracy']:.3f} | {r['int8_accuracy']:.3f} | "
              f"{r['accuracy_drop_points']:.2f} | {r['speedup']:.2f}× |")
    (out / f"int8-{'-'.join(args.arch or ['all'])}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
