#!/usr/bin/env python3
"""Multi-label and regression quality against a plain loop, on real handwritten digits (issue 25).

    .venv/bin/python bench/tasks.py [--out bench/out] [--epochs 10] [--size 64] [--tiny]

multi-label  scikit-learn's digits, one or two per image side by side; labels = the digits shown.
             `transfer-studio train` (feature extraction, BCE, tuned thresholds) against a plain
             loop (frozen resnet18, model.train(), Adam 1e-3 on fc, BCEWithLogits); both scored by
             the same mAP (engine.training.task_metrics) on the same validation images.
regression   one digit rotated by an angle in [-45, 45] degrees; target = the angle. Ours
             (standardised target, MSE) against a plain MSE loop on the raw angle; R² on validation.
Same stand-in weights (bench/run_benchmarks.py's weights_file), epochs, image size and batch size.
Prints one JSON line per task; --tiny runs a few hundred images for 2 epochs (a smoke test).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_benchmarks import timed, weights_file  # noqa: E402

from engine.training.task_metrics import mean_average_precision, regression_metrics  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_digits():
    """scikit-learn's digits (1,797 real handwritten 8x8 scans); where scikit-learn is missing, a
    stand-in of font-rendered digits with random shifts, so that --tiny still runs (say which)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits

        found = sklearn_digits()
        return found.images, found.target, "scikit-learn digits"
    except ImportError:
        from PIL import ImageDraw, ImageFont

        rng, font, images, targets = np.random.default_rng(0), ImageFont.load_default(), [], []
        for n in range(1797):
            glyph = Image.new("L", (16, 16))
            ImageDraw.Draw(glyph).text((4 + int(rng.integers(-2, 3)), 2 + int(rng.integers(-2, 3))), str(n % 10),
                                       fill=255, font=font)
            images.append(np.asarray(glyph.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64) * 16 / 255)
            targets.append(n % 10)
        return np.stack(images), np.array(targets), "font-rendered stand-in (scikit-learn missing)"


DIGITS = None


def _digits():
    global DIGITS
    if DIGITS is None:
        DIGITS = load_digits()
    return DIGITS


def _digit(images, i: int, side: int) -> Image.Image:
    pixels = (images[i] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels, "L").resize((side, side), Image.Resampling.BILINEAR)


def multilabel_csv(root: Path, size: int, count: int) -> Path:
    (images, target, _), rng = _digits(), np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        picks = rng.choice(len(images), size=int(rng.integers(1, 3)), replace=False)
        canvas = Image.new("L", (size, size))
        for slot, i in enumerate(picks):  # one digit centred, or two side by side
            side = size // 2 if len(picks) == 2 else size * 3 // 4
            x = slot * size // 2 if len(picks) == 2 else (size - side) // 2
            canvas.paste(_digit(images, int(i), side), (x, (size - side) // 2))
        canvas.convert("RGB").save(root / f"{n:05d}.png")
        rows.append((f"{n:05d}.png", " ".join(sorted({str(target[i]) for i in picks})),
                     "val" if n % 5 == 0 else "train"))
    return _write(root / "labels.csv", ("path", "labels", "split"), rows)


def rotation_csv(root: Path, size: int, count: int) -> Path:
    (images, target, _), rng = _digits(), np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        angle = float(rng.uniform(-45, 45))
        image = _digit(images, int(rng.integers(len(images))), size).rotate(angle, Image.Resampling.BILINEAR)
        image.convert("RGB").save(root / f"{n:05d}.png")
        rows.append((f"{n:05d}.png", f"{angle:.3f}", "val" if n % 5 == 0 else "train"))
    return _write(root / "values.csv", ("path", "value", "split"), rows)


def _write(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read(table: Path, size: int, column: str):
    """(train x, train y, val x, val y) as normalized tensors; y multi-hot or values."""
    rows = list(csv.DictReader(open(table)))
    names = sorted({n for r in rows for n in r[column].split()}) if column == "labels" else None
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    out = {"train": ([], []), "val": ([], [])}
    for r in rows:
        image = Image.open(table.parent / r["path"]).convert("RGB").resize((size, size))
        x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean) / std
        y = (torch.tensor([float(n in r[column].split()) for n in names]) if names else torch.tensor(float(r[column])))
        out[r["split"]][0].append(x)
        out[r["split"]][1].append(y)
    return [torch.stack(v) for split in ("train", "val") for v in out[split]]


def plain_loop(table: Path, task: str, weights: Path, epochs: int, size: int, batch: int = 32) -> dict:
    """The loop people write: frozen trunk in train mode, a new fc, Adam 1e-3, the raw target."""
    torch.manual_seed(0)
    xt, yt, xv, yv = _read(table, size, "labels" if task == "multi-label" else "value")
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(weights, weights_only=True))
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, yt.shape[1] if task == "multi-label" else 1)
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss() if task == "multi-label" else nn.MSELoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(batch):
            out = model(xt[idx])
            loss = loss_fn(out, yt[idx]) if task == "multi-label" else loss_fn(out[:, 0], yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x) for x in xv.split(128)])
    if task == "multi-label":
        return {"mAP": mean_average_precision(out.sigmoid(), yv)[0]}
    return regression_metrics(out[:, 0], yv)


def ours(table: Path, out: Path, weights: Path, epochs: int, size: int, extra: list[str]) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    seconds, line = timed([sys.executable, "-m", "app", "train", "--data", str(table), "--model", "resnet18",
                           "--weights", str(weights), "--strategy", "feature-extraction", "--epochs", str(epochs),
                           "--image-size", str(size), "--batch-size", "32", "--augment", "none", "--device", "cpu",
                           "--out", str(out), "--json", *extra])
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"seconds": round(seconds, 1), "best": json.loads(line)["best_val_metrics"],
            "last": {k[4:]: v for k, v in last.items() if k in ("val_mAP", "val_mae", "val_rmse", "val_r2")}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--tiny", action="store_true", help="200 images, 2 epochs, 32 px: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.epochs, args.size, args.images = 2, 32, 200
    out = Path(args.out) / ("tasks-tiny" if args.tiny else "tasks")
    weights = weights_file(Path(args.out) / "resnet18-weights.pth")
    for task, make, extra in (("multi-label", multilabel_csv, []), ("regression", rotation_csv, ["--loss", "mse"])):
        table = make(out / task, args.size, args.images)
        result = {"task": task, "digits": _digits()[2], "images": args.images, "epochs": args.epochs, "size": args.size,
                  "transfer_studio": ours(table, out / f"run-{task}", weights, args.epochs, args.size, extra),
                  "plain_loop": plain_loop(table, task, weights, args.epochs, args.size)}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
