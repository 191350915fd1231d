#!/usr/bin/env python3
"""Feature extraction with --adapt-norm auto against --adapt-norm off and the plain loop (issue 27).

    .venv/bin/python bench/adapt_norm.py [--cases shifted,demo,same] [--pairs 1] [--out bench/out]
    .venv/bin/python bench/adapt_norm.py --size 32 --epochs 2 --weight-epochs 1 --per-class 20   # a smoke run

The plain loop's "frozen" BatchNorm re-estimates its statistics under model.train(): a bug that helps
on a shifted domain. `auto` measures whether adapting the statistics (AdaBN) helps and keeps the better.
Cases, each from a resnet18 trained here (random init, 10 classes, Adam) on one half of scikit-learn's
digits, then feature extraction on the other half (80 % train / 20 % val, the same split everywhere):
  shifted  the weights were trained on those other digits drawn differently (grey background, low
           contrast, as from another scanner): their BatchNorm statistics do not fit these images.
           Target: auto's accuracy >= the plain loop's, at >= 5x its speed.
  same     the weights were trained on those other digits drawn the same way: no shift.
           Target: auto never below off by more than 0.5 points.
  demo     the built-in demo shapes (train and val drawn apart), from the stand-in weights of
           bench/run_benchmarks.py (statistics calibrated on other shapes).
Each case runs the plain loop, then Transfer Studio with --adapt-norm off, then auto, back to back, each
as its own process timed whole with an empty feature cache (bench/run_benchmarks.py's timed()). Prints
one JSON line per run, the auto decisions and a markdown table; writes OUT/adapt_norm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as rb  # noqa: E402 - the round-1 pieces: whole-process timing, the stand-in weights
from engine.runs.run_folder import RunFolder  # noqa: E402 - importable once run_benchmarks added the root

FE_ARGS = ["--strategy", "feature-extraction"]  # otherwise the defaults (AdamW, cosine, the head's base LR)
SHIFT = (0.35, 120)  # the "other scanner": pixel * 0.35 + 120, digits on a grey background at low contrast
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- data and weights -----------------------------------------------------------------------------


def digits_halves(per_class: int | None) -> tuple[list, list]:
    """scikit-learn's digits (8x8, 16 grey levels) split per class into two halves, seeded: (pixels
    0-255 as uint8 8x8, label) pairs for the weights, and for the benchmark's own dataset."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("bench/adapt_norm.py: needs scikit-learn for its digits (pip install scikit-learn)") from None
    digits = load_digits()
    rng = np.random.default_rng(0)
    weights_half, data_half = [], []
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        half = len(idx) // 2
        chosen = idx[half:] if per_class is None else idx[half:][:per_class]
        weights_half += [((digits.images[i] * (255 / 16)).astype(np.uint8), label) for i in idx[:half]]
        data_half += [((digits.images[i] * (255 / 16)).astype(np.uint8), label) for i in chosen]
    return weights_half, data_half


def drawn(pixels: np.ndarray, size: int, shifted: bool = False) -> Image.Image:
    if shifted:
        pixels = (pixels.astype(np.float32) * SHIFT[0] + SHIFT[1]).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def write_digits(root: Path, digits: list, size: int) -> Path:
    """DIR/train and DIR/val (80/20 per class, seeded), as the plain loop and `train --data` read them."""
    if (root / ".done").exists():
        return root
    rng = np.random.default_rng(1)
    for label in range(10):
        mine = [pixels for pixels, y in digits if y == label]
        order = rng.permutation(len(mine))
        n_val = max(1, round(len(mine) * 0.2))
        for rank, i in enumerate(order):
            folder = root / ("val" if rank < n_val else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            drawn(mine[i], size).save(folder / f"{i:04d}.png")
    (root / ".done").write_text("ok")
    return root


def write_demo(root: Path, size: int) -> Path:
    from engine.data.demo import write_demo_dataset

    if not (root / ".done").exists():
        write_demo_dataset(root / "train", classes=4, per_class=60, size=size, seed=0)
        write_demo_dataset(root / "val", classes=4, per_class=15, size=size, seed=1)
        (root / ".done").write_text("ok")
    return root


def trained_weights(path: Path, digits: list, size: int, epochs: int, shifted: bool) -> Path:
    """resnet18 trained from random init on `digits` (drawn shifted or not): its BatchNorm statistics
    are those of the images it saw. Saved with a 1000-class head, as ImageNet weights are."""
    if path.exists():
        return path
    torch.manual_seed(0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = torch.stack([torch.from_numpy(np.array(drawn(p, size, shifted))).permute(2, 0, 1) for p, _ in digits])
    x_all = (images.float() / 255 - mean) / std
    y_all = torch.tensor([y for _, y in digits])
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_all))
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            if len(idx) < 2:
                continue
            loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(json.dumps({"weights": path.name, "epoch": epoch + 1, "last_loss": round(loss.item(), 4)}), flush=True)
    model.fc = torch.nn.Linear(512, 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


# --- the runs -----------------------------------------------------------------------------------


def plain_run(case: str, data: Path, weights: Path, args) -> dict:
    seconds, line = rb.timed([sys.executable, "bench/plain_loop.py", "--data", str(data), "--mode", "fe",
                              "--weights", str(weights), "--epochs", str(args.epochs), "--size", str(args.size),
                              "--workers", "2", "--batch-size", "32"])
    return {"case": case, "side": "plain loop", "seconds": seconds, "val_accuracy": json.loads(line)["val_accuracy"]}


def ours_run(case: str, data: Path, weights: Path, out: Path, args, adapt_norm: str) -> dict:
    seconds, summary, metrics = rb.ours(data, out, ["--weights", str(weights), *FE_ARGS, "--epochs", str(args.epochs),
                                                    "--image-size", str(args.size), "--adapt-norm", adapt_norm])
    choice = RunFolder(out).read_run().norm_choice
    return {"case": case, "side": f"Transfer Studio, --adapt-norm {adapt_norm}", "seconds": seconds,
            "val_accuracy": metrics[-1].val_accuracy, "best_val_accuracy": summary["best_val_accuracy"],
            "norm_statistics": choice.to_dict() if choice else None}


def verdicts(runs: list[dict]) -> list[str]:
    """The issue's targets, checked on the medians of each side."""
    def median(case, side, key="val_accuracy"):
        values = [r[key] for r in runs if r["case"] == case and r["side"] == side]
        return statistics.median(values) if values else None

    lines = []
    plain_side, off, auto = "plain loop", "Transfer Studio, --adapt-norm off", "Transfer Studio, --adapt-norm auto"
    if median("shifted", auto) is not None and median("shifted", plain_side) is not None:
        accuracy, speed = median("shifted", auto), median("shifted", plain_side, "seconds") / median("shifted", auto,
                                                                                                    "seconds")
        ok = accuracy >= median("shifted", plain_side) and speed >= 5
        lines.append(f"shifted: auto {accuracy:.3f} vs plain {median('shifted', plain_side):.3f} at {speed:.1f}x "
                     f"(target >= plain at >= 5x): {'met' if ok else 'NOT met'}")
    if median("same", auto) is not None and median("same", off) is not None:
        drop = (median("same", off) - median("same", auto)) * 100
        lines.append(f"same: auto {median('same', auto):.3f} vs off {median('same', off):.3f} "
                     f"(target: at most 0.5 points below): {'met' if drop <= 0.5 else 'NOT met'}")
    return lines


def table(runs: list[dict]) -> str:
    lines = ["| case | side | seconds (median) | speed vs plain | val accuracy (last; best) | auto chose |",
             "|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in runs):
        mine = [r for r in runs if r["case"] == case]
        plain = [r["seconds"] for r in mine if r["side"] == "plain loop"]
        for side in dict.fromkeys(r["side"] for r in mine):
            these = [r for r in mine if r["side"] == side]
            seconds = statistics.median(r["seconds"] for r in these)
            speed = f"{statistics.median(plain) / seconds:.1f}×" if plain else ""
            accuracy = ", ".join(f"{r['val_accuracy']:.3f}" + (f" ({r['best_val_accuracy']:.3f})"
                                                               if "best_val_accuracy" in r else "") for r in these)
            chose = "; ".join(_chose(r["norm_statistics"]) for r in these if r.get("norm_statistics")
                              and "auto" in side)
            lines.append(f"| {case} | {side} | {seconds:.1f} s | {speed} | {accuracy} | {chose} |")
    return "\n".join(lines)


def _chose(record: dict) -> str:
    if record.get("adapted_score", record.get("adapted_balanced_accuracy")) is None:
        return "adapted" if record["adapted"] else "as loaded"
    return (f"{'adapted' if record['adapted'] else 'as loaded'} ({record['gain_points']:+.1f} points adapted, "
            f"{record['seconds']:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(rb.ROOT / "bench" / "out"))
    parser.add_argument("--cases", default="shifted,demo,same")
    parser.add_argument("--pairs", type=int, default=1, help="rounds of plain/off/auto, back to back")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--weight-epochs", type=int, default=6, help="epochs training each digits weights file")
    parser.add_argument("--per-class", type=int, default=None, help="at most this many images per class (smoke runs)")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - {"shifted", "demo", "same"})
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)} (choose from shifted, demo, same)")
    out = Path(args.out) / f"adapt-norm-{args.size}px"
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(rb.ROOT)
    tag = f"{args.size}px-{args.weight_epochs}ep"
    plan = {}
    if {"shifted", "same"} & set(cases):
        weights_half, data_half = digits_halves(args.per_class)
        digits = write_digits(out / f"digits-{args.per_class or 'all'}", data_half, args.size)
        if "shifted" in cases:
            plan["shifted"] = (digits, trained_weights(out / f"resnet18-other-digits-shifted-{tag}.pth", weights_half,
                                                       args.size, args.weight_epochs, shifted=True))
        if "same" in cases:
            plan["same"] = (digits, trained_weights(out / f"resnet18-other-digits-{tag}.pth", weights_half, args.size,
                                                    args.weight_epochs, shifted=False))
    if "demo" in cases:
        plan["demo"] = (write_demo(out / "demo", args.size), rb.weights_file(out / "resnet18-weights.pth"))
    runs = []
    for pair in range(args.pairs):
        for case in cases:
            data, weights = plan[case]
            runs.append(plain_run(case, data, weights, args))
            print(json.dumps(runs[-1]), flush=True)
            for adapt in ("off", "auto"):
                runs.append(ours_run(case, data, weights, out / f"run-{case}-{adapt}-{pair}", args, adapt))
                print(json.dumps(runs[-1]), flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    (out / "adapt_norm.json").write_text(json.dumps({"machine": machine, "args": vars(args), "runs": runs}, indent=2))
    print(f"\n{machine}; feature extraction, {args.epochs} epochs at {args.size} px, no augmentation\n")
    print(table(runs))
    for line in verdicts(runs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
