#!/usr/bin/env python3
"""The CUDA path against the plain loop: resnet50 fine-tuning at 224 px, same data, same batch size.

    python3 bench/gpu_bench.py --out DIR

Writes a JPEG ImageFolder (8 classes, train/ and val/), then runs as separate processes:
the plain loop (ImageFolder + PIL transforms, fp32, 8 workers), Transfer Studio with its defaults
on CUDA (decoded-image cache, bf16 autocast, channels_last, pinned memory, 8 workers), and
Transfer Studio with mixed precision off, to separate the effects. Compares training images/s of
the epochs after the first (the first includes cuDNN autotuning and the cache warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.runs.run_folder import RunFolder  # noqa: E402

RECIPE = ["--lr", "conv1=1e-5", "--lr", "layer1=1e-5", "--lr", "layer2=5e-5", "--lr", "layer3=1e-4",
          "--lr", "layer4=5e-4", "--lr", "fc=1e-3"]


def _write_class(job):
    root, label, shape, train_n, val_n, size = job
    from engine.data.demo import _draw

    rng = np.random.default_rng(label)
    for i in range(train_n + val_n):
        split = "train" if i < train_n else "val"
        folder = Path(root) / split / shape
        folder.mkdir(parents=True, exist_ok=True)
        _draw(shape, size, rng).save(folder / f"{i:04d}.jpg", quality=90)


def make_dataset(root: Path, train_n: int, val_n: int, size: int) -> None:
    from engine.data.demo import SHAPES

    with Pool(8) as pool:
        pool.map(_write_class, [(str(root), i, s, train_n, val_n, size) for i, s in enumerate(SHAPES)])


def run(cmd: list[str], log: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout + "\n----\n" + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout.strip().splitlines()[-1]


def ours(data: Path, out: Path, name: str, extra: list[str], epochs: int, bs: int) -> dict:
    run_dir = out / name
    seconds, line = run([sys.executable, "-m", "app", "train", "--data", str(data), "--model", "resnet50",
                         "--weights", "none", "--strategy", "fine-tune", "--optimizer", "adamw", "--weight-decay",
                         "0.01", "--augment", "standard", "--image-size", "224", "--epochs", str(epochs),
                         "--batch-size", str(bs), "--workers", "8", "--device", "cuda", "--schedule", "constant",
                         "--out", str(run_dir), "--json", *RECIPE, *extra], out / f"{name}.log")
    metrics = RunFolder(run_dir).read_epochs()
    record = RunFolder(run_dir).read_run()
    return {"wall_seconds": seconds, "epoch_seconds": [m.seconds for m in metrics], "images_per_second_after_first": float(np.mean([m.images_per_second for m in metrics[1:]])),
            "first_epoch_images_per_second": metrics[0].images_per_second,
            "data_seconds_per_epoch": float(np.mean([m.data_seconds for m in metrics[1:]])),
            "val_accuracy": metrics[-1].val_accuracy, "precision": record.precision, "summary": json.loads(line)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--train-per-class", type=int, default=448)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path("/tmp/ts-gpu-data")
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
              "bf16_supported": torch.cuda.is_bf16_supported(), "cpus": os.cpu_count()}
    t = time.perf_counter()
    make_dataset(data, args.train_per_class, 64, 288)
    result["dataset"] = {"train": 8 * args.train_per_class, "val": 8 * 64, "size": "288x288 JPEG",
                         "seconds_to_write": time.perf_counter() - t}
    print(json.dumps(result), flush=True)

    seconds, line = run([sys.executable, "bench/plain_loop.py", "--data", str(data), "--mode", "ft", "--arch",
                         "resnet50", "--epochs", str(args.epochs), "--size", "224", "--batch-size", str(args.batch_size),
                         "--workers", "8", "--augment", "standard", "--device", "cuda"], out / "plain.log")
    plain = json.loads(line)
    result["plain"] = {"wall_seconds": seconds,
                       "images_per_second_after_first": float(np.mean([e["images_per_second"] for e in plain["epochs"][1:]])),
                       "first_epoch_images_per_second": plain["epochs"][0]["images_per_second"],
                       "val_accuracy": plain["val_accuracy"]}
    print(json.dumps(result["plain"]), flush=True)
    result["ours"] = ours(data, out, "ours", [], args.epochs, args.batch_size)
    print(json.dumps(result["ours"]), flush=True)
    result["ours_fp32"] = ours(data, out, "ours-fp32", ["--precision", "off"], args.epochs, args.batch_size)
    print(json.dumps(result["ours_fp32"]), flush=True)
    result["ours_cudnn_benchmark"] = ours(data, out, "ours-cudnn-benchmark", ["--cudnn-benchmark"], args.epochs,
                                          args.batch_size)
    print(json.dumps(result["ours_cudnn_benchmark"]), flush=True)
    result["speedup_images_per_second"] = (result["ours"]["images_per_second_after_first"]
                                           / result["plain"]["images_per_second_after_first"])
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"speedup_images_per_second": result["speedup_images_per_second"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
