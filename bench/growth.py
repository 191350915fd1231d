#!/usr/bin/env python3
"""How time and memory grow with the dataset: 1,000 / 10,000 / 50,000 small images.

    .venv/bin/python bench/growth.py [--sizes 1000,10000,50000] [--out bench/out/growth]
    .venv/bin/python bench/growth.py --sizes 60,120 --epochs 2      # a smoke run

For each size, a synthetic ImageFolder (engine.data.demo's shapes, 8 classes, 32 px PNGs) and three
processes, each timed whole and run alone: a scan (engine.data.dataset.scan_dataset), feature extraction
(frozen resnet18, augmentation 'standard', cached views) and fine-tuning (augmentation
'standard'), both `transfer-studio train` at 32 px on CPU from random weights (timings do not depend
on the weights). Recorded: scan time; time before the first epoch (imports, scan, decoding, trunk
features); first-epoch and later-epoch time; the process's peak resident memory (its own
rusage, from wait4); the feature cache's size on disk. Writes OUT/growth.json, OUT/growth.md (a
table for docs/benchmarks.md) and OUT/growth.png (time and memory against dataset size, drawn
with PIL: matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.demo import SHAPES, write_demo_dataset  # noqa: E402
from engine.runs.run_folder import RunFolder  # noqa: E402

IMAGE_SIZE = 32
TRAIN = ["--model", "resnet18", "--weights", "none", "--device", "cpu", "--batch-size", "64", "--image-size",
         str(IMAGE_SIZE), "--augment", "standard", "--schedule", "constant", "--json"]
CASES = {"feature extraction": ["--strategy", "feature-extraction", "--optimizer", "adam", "--weight-decay", "0"],
         "fine-tuning": ["--strategy", "fine-tune", "--optimizer", "adamw"]}


def dataset(root: Path, images: int) -> Path:
    folder = root / f"shapes-{images}"
    if not (folder / ".done").exists():
        write_demo_dataset(folder, classes=len(SHAPES), per_class=max(1, images // len(SHAPES)), size=IMAGE_SIZE, seed=0)
        (folder / ".done").write_text("ok")
    return folder


def measured(cmd: list[str], cache: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, last stdout line) of one process; RSS from its own rusage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_CACHE": str(cache)}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr.read()[-2000:]}")
        lines = stdout.read().strip().splitlines()
    return seconds, usage.ru_maxrss * 1024, lines[-1] if lines else ""  # ru_maxrss: KiB on Linux


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def scan_case(data: Path, work: Path) -> dict:
    code = ("import json, time; from engine.data.dataset import scan_dataset; t = time.perf_counter(); "
            f"s = scan_dataset({str(data)!r}, 0.2, 0); print(json.dumps([time.perf_counter() - t, s.total]))")
    _, rss, line = measured([sys.executable, "-c", code], work / "cache-scan")
    seconds, total = json.loads(line)
    return {"scan_seconds": seconds, "images": total, "scan_peak_rss": rss}


def train_case(name: str, data: Path, work: Path, epochs: int) -> dict:
    out, cache = work / f"run-{name.replace(' ', '-')}", work / f"cache-{name.replace(' ', '-')}"
    seconds, rss, line = measured([sys.executable, "-m", "app", "train", "--data", str(data), *TRAIN, *CASES[name],
                                   "--epochs", str(epochs), "--out", str(out)], cache)
    epochs_seen = RunFolder(out).read_epochs()
    epoch_seconds = [m.seconds for m in epochs_seen]
    later = epoch_seconds[1:]
    record = RunFolder(out).read_run()
    return {"seconds": seconds, "before_first_epoch": seconds - sum(epoch_seconds),
            "first_epoch": epoch_seconds[0], "later_epoch": sum(later) / len(later) if later else None,
            "peak_rss": rss, "feature_cache_bytes": folder_bytes(cache / "features"),
            "val_accuracy": epochs_seen[-1].val_accuracy, "precision": record.precision,
            "feature_note": record.feature_cache, "summary": json.loads(line)}


def markdown(rows: list[dict]) -> str:
    head = ("| images | scan | FE: before epoch 1 | FE: epoch 1 | FE: later epoch | FE: peak RSS | feature cache on disk "
            "| FT: before epoch 1 | FT: epoch 1 | FT: later epoch | FT: peak RSS |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        fe, ft = r["feature extraction"], r["fine-tuning"]
        lines.append(f"| {r['images']:,} | {r['scan_seconds']:.2f} s | {fe['before_first_epoch']:.1f} s | "
                     f"{fe['first_epoch']:.2f} s | {_s(fe['later_epoch'])} | {_mib(fe['peak_rss'])} | "
                     f"{_mib(fe['feature_cache_bytes'])} | {ft['before_first_epoch']:.1f} s | {ft['first_epoch']:.1f} s | "
                     f"{_s(ft['later_epoch'])} | {_mib(ft['peak_rss'])} |")
    return "\n".join(lines)


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f} s"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


# --- the plot ------------------------------------------------------------------------------------

COLOURS = {"FE whole process": (33, 102, 172), "FT whole process": (214, 96, 77), "scan": (90, 90, 90),
           "FE peak RSS": (33, 102, 172), "FT peak RSS": (214, 96, 77)}


def plot(rows: list[dict], path: Path) -> None:
    """Two panels, linear axes (linear growth reads as a straight line): time and peak memory."""
    sizes = [r["images"] for r in rows]
    time_series = {"FE whole process": [r["feature extraction"]["seconds"] for r in rows],
                   "FT whole process": [r["fine-tuning"]["seconds"] for r in rows],
                   "scan": [r["scan_seconds"] for r in rows]}
    memory_series = {"FE peak RSS": [r["feature extraction"]["peak_rss"] / 2**20 for r in rows],
                     "FT peak RSS": [r["fine-tuning"]["peak_rss"] / 2**20 for r in rows]}
    image = Image.new("RGB", (1200, 480), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, (70, 40, 560, 410), sizes, time_series, "time (seconds)")
    _panel(draw, (680, 40, 1170, 410), sizes, memory_series, "peak resident memory (MiB)")
    draw.text((500, 450), "dataset size (images)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _panel(draw: ImageDraw.ImageDraw, box, xs: list[int], series: dict[str, list[float]], unit: str) -> None:
    left, top, right, bottom = box
    x_max = max(xs) or 1
    y_max = max(max(v) for v in series.values()) * 1.1 or 1
    draw.rectangle(box, outline="black")
    for i in range(5):  # ticks: 0, 1/4 ... of each axis
        x = left + (right - left) * i / 4
        y = bottom - (bottom - top) * i / 4
        draw.line((x, bottom, x, bottom + 5), fill="black")
        draw.text((x - 15, bottom + 8), f"{x_max * i / 4:,.0f}", fill="black")
        draw.line((left - 5, y, left, y), fill="black")
        draw.text((left - 60, y - 6), f"{y_max * i / 4:,.1f}", fill="black")
    draw.text((left, top - 22), unit, fill="black")
    for k, (name, ys) in enumerate(series.items()):
        points = [(left + (right - left) * x / x_max, bottom - (bottom - top) * y / y_max) for x, y in zip(xs, ys)]
        colour = COLOURS[name]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for px, py in points:
            draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour)
        draw.line((left + 12, top + 14 + 18 * k, left + 40, top + 14 + 18 * k), fill=colour, width=3)
        draw.text((left + 46, top + 8 + 18 * k), name, fill="black")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="dataset sizes, comma-separated")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (at least 2: first vs later)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "growth"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        data = dataset(out / "data", size)
        work = Path(tempfile.mkdtemp(prefix=f"growth-{size}-", dir=out))
        row = scan_case(data, work)
        for name in CASES:
            row[name] = train_case(name, data, work, args.epochs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    table = markdown(rows)
    (out / "growth.json").write_text(json.dumps({"machine": machine, "epochs": args.epochs, "rows": rows}, indent=2))
    (out / "growth.md").write_text(f"{machine}; {args.epochs} epochs, {IMAGE_SIZE} px, resnet18, "
                                   f"augmentation 'standard'\n\n{table}\n")
    plot(rows, out / "growth.png")
    print(f"\n{machine}\n\n{table}\n\nplot: {out / 'growth.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
