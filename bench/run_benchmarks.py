#!/usr/bin/env python3
"""Transfer Studio against the plain tutorial loop, on the same data, in one invocation.

    .venv/bin/python bench/run_benchmarks.py [--cases fe,ft,jpeg,gui] [--out bench/out]

Every case runs the plain loop (bench/plain_loop.py) and `transfer-studio train` as separate
processes and times each whole process (wall clock, interpreter start and imports included).
Cases:
  fe    feature extraction, 10 epochs at 96 px, from a weights file, on scikit-learn's digits
        (1,797 real handwritten digits, scaled up): speed ratio and accuracy
  ft    fine-tuning with the reference discriminative recipe, 3 epochs at 64 px, same data
  jpeg  fine-tuning on a folder of 2048x1536 JPEGs at 64 px; epochs after the first, plain loop
        with 2 loader workers
  timm  feature extraction of timm's vit_tiny_patch16_224 at 224 px, 10 epochs, digits: speed ratio
  gui   the longest GUI-thread stall while the window trains (10 ms timer, offscreen)
Results go to OUT/results.json and are printed as a table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.runs.records import EpochRecord  # noqa: E402
from engine.runs.run_folder import RunFolder  # noqa: E402

RECIPE = ["--lr", "conv1=1e-5", "--lr", "layer1=1e-5", "--lr", "layer2=5e-5", "--lr", "layer3=1e-4",
          "--lr", "layer4=5e-4", "--lr", "fc=1e-3"]


def digits_dataset(root: Path, size: int = 96) -> Path:
    """scikit-learn's digits (real scans, 8x8, 16 grey levels) as an ImageFolder with train/ and val/."""
    if (root / ".done").exists():
        return root
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = round(len(idx) * 0.2)
        for split, members in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB").save(
                    folder / f"{i:04d}.png")
    (root / ".done").write_text("ok")
    return root


def large_jpeg_dataset(root: Path, per_class: int = 32) -> Path:
    """2048x1536 JPEG photos-to-be: demo shapes scaled up with sensor-like noise (~1 MB each)."""
    if (root / ".done").exists():
        return root
    from engine.data.demo import SHAPES, _draw

    rng = np.random.default_rng(0)
    for shape in SHAPES[:4]:
        for i in range(per_class):
            split = "val" if i % 4 == 0 else "train"
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            small = _draw(shape, 192, rng).resize((2048, 1536), Image.Resampling.BICUBIC)
            noisy = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, size=(1536, 2048, 3))
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)
    (root / ".done").write_text("ok")
    return root


def weights_file(path: Path) -> Path:
    """A resnet18 state dict standing in for downloaded ImageNet weights (no network here).

    Random convolutions, but BatchNorm statistics calibrated on *other* images (the synthetic
    shapes), as pretrained statistics come from other data: consistent with the weights, not
    with the benchmark's dataset.
    """
    if not path.exists():
        from engine.data.dataset import normalize_batch, scan_dataset
        from engine.data.demo import write_demo_dataset
        from engine.data.images import decode_resized
        from engine.model.architectures import preprocessing_for

        torch.manual_seed(0)
        model = torchvision.models.resnet18()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over all calibration batches
        shapes = write_demo_dataset(path.parent / "calibration-shapes", classes=8, per_class=32, size=96, seed=1)
        prep = preprocessing_for("resnet18", 96)
        images = torch.stack([decode_resized(Path(s.path), prep.crop) [:, :prep.crop, :prep.crop]
                              for s in scan_dataset(shapes, 0.0).train])
        model.train()
        with torch.no_grad():
            for batch in images.split(32):
                model(normalize_batch(batch, prep))
        torch.save(model.state_dict(), path)
    return path


def timed(cmd: list[str]) -> tuple[float, str]:
    # A fresh cache folder per process: no run may profit from features cached by an earlier one.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_CACHE": tempfile.mkdtemp(prefix="ts-bench-cache-")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout.strip().splitlines()[-1]


def timm_weights_file(path: Path, name: str) -> Path:
    """timm's own initialisation of `name` as a state dict, standing in for its pretrained file."""
    if not path.exists():
        import timm

        torch.manual_seed(0)
        torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return path


def plain(data: Path, mode: str, epochs: int, size: int, weights: Path, arch: str = "resnet18") -> tuple[float, dict]:
    seconds, line = timed([sys.executable, "bench/plain_loop.py", "--data", str(data), "--mode", mode,
                           "--weights", str(weights), "--epochs", str(epochs), "--size", str(size),
                           "--workers", "2", "--batch-size", "32", "--arch", arch])
    return seconds, json.loads(line)


def ours(data: Path, out: Path, args: list[str], arch: str = "resnet18") -> tuple[float, dict, list[EpochRecord]]:
    shutil.rmtree(out, ignore_errors=True)  # the previous invocation's run: train refuses a used folder
    # The defaults a new user gets, but for no augmentation: the plain loop has none either.
    seconds, line = timed([sys.executable, "-m", "app", "train", "--data", str(data), "--model", arch,
                           "--augment", "none", "--out", str(out), "--json", *args])
    return seconds, json.loads(line), RunFolder(out).read_epochs()


def case_fe(out: Path, digits: Path, weights: Path) -> dict:
    p_sec, p = plain(digits, "fe", 10, 96, weights)
    o_sec, o, metrics = ours(digits, out / "run-fe", ["--weights", str(weights), "--strategy", "feature-extraction",
                                                "--epochs", "10", "--image-size", "96"])
    return {"case": "feature extraction, 10 epochs, 96 px (digits, 1,437 train / 360 val)",
            "plain_seconds": p_sec, "ours_seconds": o_sec, "speedup": p_sec / o_sec,
            "plain_val_accuracy": p["val_accuracy"], "ours_val_accuracy": o["best_val_accuracy"],
            "ours_final_val_accuracy": metrics[-1].val_accuracy}


def case_timm_vit(out: Path, digits: Path) -> dict:
    """Feature extraction of a small timm ViT at its own 224 px: the cached-feature advantage must hold
    for a transformer trunk as for resnet18's."""
    arch = "timm:vit_tiny_patch16_224"
    weights = timm_weights_file(out / "vit_tiny_patch16_224.pth", arch[5:])
    p_sec, p = plain(digits, "fe", 10, 224, weights, arch)
    o_sec, o, metrics = ours(digits, out / "run-timm-vit", ["--weights", str(weights), "--strategy",
                                                             "feature-extraction", "--epochs", "10",
                                                             "--image-size", "224"], arch)
    return {"case": "feature extraction of timm vit_tiny_patch16_224, 10 epochs, 224 px (digits)",
            "plain_seconds": p_sec, "ours_seconds": o_sec, "speedup": p_sec / o_sec,
            "plain_val_accuracy": p["val_accuracy"], "ours_val_accuracy": o["best_val_accuracy"],
            "ours_final_val_accuracy": metrics[-1].val_accuracy}


def case_ft(out: Path, digits: Path, weights: Path) -> dict:
    p_sec, p = plain(digits, "ft", 3, 64, weights)
    o_sec, o, metrics = ours(digits, out / "run-ft", ["--weights", str(weights), "--strategy", "fine-tune",
                                                      "--optimizer", "adamw", "--weight-decay", "0.01",
                                                      "--epochs", "3", "--image-size", "64", *RECIPE])
    return {"case": "fine-tuning, reference recipe, 3 epochs, 64 px (digits)",
            "plain_seconds": p_sec, "ours_seconds": o_sec, "time_ratio": o_sec / p_sec,
            "plain_val_accuracy": p["val_accuracy"], "ours_val_accuracy": metrics[-1].val_accuracy}


def case_jpeg(out: Path, jpegs: Path, weights: Path) -> dict:
    p_sec, p = plain(jpegs, "ft", 4, 64, weights)
    o_sec, o, metrics = ours(jpegs, out / "run-jpeg", ["--weights", str(weights), "--strategy", "fine-tune",
                                                       "--optimizer", "adamw", "--weight-decay", "0.01",
                                                       "--epochs", "4", "--image-size", "64", *RECIPE])
    plain_later = float(np.mean([e["seconds"] for e in p["epochs"][1:]]))
    ours_later = float(np.mean([m.seconds for m in metrics[1:]]))
    return {"case": "fine-tuning on 2048x1536 JPEGs at 64 px (96 train / 32 val), epochs 2-4",
            "plain_epoch_seconds": plain_later, "ours_epoch_seconds": ours_later,
            "speedup_after_first_epoch": plain_later / ours_later,
            "plain_first_epoch_seconds": p["epochs"][0]["seconds"], "ours_first_epoch_seconds": metrics[0].seconds,
            "plain_seconds": p_sec, "ours_seconds": o_sec}


def case_gui() -> dict:
    seconds, line = timed([sys.executable, "bench/gui_stall.py", "--only", "training"])
    return {"case": "GUI-thread stall while training (demo dataset, 64 px, 3 epochs, CPU)", **json.loads(line),
            "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="fe,ft,jpeg,gui")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    digits = digits_dataset(out / "digits")
    weights = weights_file(out / "resnet18-weights.pth")
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}, Python {platform.python_version()}",
               "cases": []}
    for case in args.cases.split(","):
        if case == "fe":
            results["cases"].append(case_fe(out, digits, weights))
        elif case == "ft":
            results["cases"].append(case_ft(out, digits, weights))
        elif case == "jpeg":
            results["cases"].append(case_jpeg(out, large_jpeg_dataset(out / "jpeg2048"), weights))
        elif case == "timm":
            results["cases"].append(case_timm_vit(out, digits_dataset(out / "digits224", size=224)))
        elif case == "gui":
            results["cases"].append(case_gui())
        print(json.dumps(results["cases"][-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
