"""A synthetic ImageFolder: coloured shapes on noisy backgrounds, identical for the same seed.

It is the built-in dataset of the window and the CLI, and the tests' data: nothing to download.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import UserError
from engine.paths import cache_dir

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "bar")
DEMO_VERSION = 1


def write_demo_dataset(root: str | os.PathLike, classes: int = 4, per_class: int = 60,
                       size: int = 96, seed: int = 0) -> Path:
    """Write the dataset; UserError in one line when the folder cannot be written."""
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be between 2 and {len(SHAPES)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    try:
        for shape in SHAPES[:classes]:
            folder = root / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _draw(shape, size, rng).save(folder / f"{shape}_{i:04d}.png", optimize=False)
    except OSError as exc:
        where = exc.filename or root
        raise UserError(f"cannot write the demo dataset to {root}: {where}: {exc.strerror or exc}") from None
    return root


def _draw(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = rng.integers(40, 216, size=3)
    noise = rng.normal(0, 28, size=(size, size, 3))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in (base + 128 + rng.integers(-40, 40, size=3)) % 256)
    radius = size * rng.uniform(0.18, 0.32)
    cx, cy = (size / 2 + rng.uniform(-0.15, 0.15, size=2) * size)
    angle = rng.uniform(0, 2 * math.pi)
    width = max(2, int(radius / 3))
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour, width=width)
    elif shape == "bar":
        draw.line(_polygon(cx, cy, radius, 2, angle), fill=colour, width=width)
    elif shape == "cross":
        for offset in (0, math.pi / 2):
            draw.line(_polygon(cx, cy, radius, 2, angle + offset), fill=colour, width=width)
    else:
        corners = {"square": 4, "triangle": 3, "diamond": 4, "star": 10}[shape]
        points = _polygon(cx, cy, radius, corners, angle if shape != "diamond" else 0.0)
        if shape == "star":
            points = [(cx + (x - cx) * (0.45 if i % 2 else 1), cy + (y - cy) * (0.45 if i % 2 else 1))
                      for i, (x, y) in enumerate(points)]
        if shape == "diamond":
            points = [(cx + (x - cx) * 0.6, y) for x, y in points]
        draw.polygon(points, fill=colour)
    return img


def _polygon(cx: float, cy: float, radius: float, corners: int, angle: float):
    return [(cx + radius * math.cos(angle + 2 * math.pi * k / corners),
             cy + radius * math.sin(angle + 2 * math.pi * k / corners)) for k in range(corners)]


def demo_dataset_dir() -> Path:
    """Where the built-in demo dataset lives (made on first use)."""
    return cache_dir() / f"demo-v{DEMO_VERSION}"


def ensure_demo_dataset() -> Path:
    """The demo dataset's folder, written on first use into the cache folder; when that cannot be
    written (read-only, a file in its place), into a temporary folder instead (see demo_note())."""
    global _note
    _note = None
    folder = demo_dataset_dir()
    if (folder / ".complete").exists():
        return folder
    try:
        return _write_complete(folder)
    except UserError as exc:
        # A private new folder: a fixed name in a shared temporary folder could be someone else's.
        try:
            temporary = Path(tempfile.mkdtemp(prefix=f"transfer-studio-demo-v{DEMO_VERSION}-"))
        except OSError as err:
            raise UserError(f"{exc}; no temporary folder either ({err.strerror or err})") from None
        _write_complete(temporary)
        _note = f"{exc}; it was written to {temporary} instead (not kept for the next run)"
        return temporary


_note: str | None = None


def demo_note() -> str | None:
    """Why the last ensure_demo_dataset() used a temporary folder, or None."""
    return _note


def _write_complete(folder: Path) -> Path:
    write_demo_dataset(folder)
    try:
        (folder / ".complete").write_text("ok\n")
    except OSError as exc:
        raise UserError(f"cannot write the demo dataset to {folder}: {exc.strerror or exc}") from None
    return folder
