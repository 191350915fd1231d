"""Robust image decoding: images in the wild are not all clean 8-bit RGB JPEGs.

Handles grayscale, palette (with transparency), RGBA/LA (composited on a fixed background),
16- and 32-bit, CMYK, EXIF orientation and decompression bombs, and uses JPEG draft mode so a
2048x1536 photo destined for 64 px is decoded at a fraction of its size.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_ASPECT_RATIO = 50  # a 1 x 2,000,000 strip is a few KB on disk and gigabytes once resized
BACKGROUND = (255, 255, 255)  # transparent pixels become white, deterministically
# The resize filters a pretrained config may name (torchvision's InterpolationMode values, timm's names).
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}

# Truncated files must fail loudly (and be skipped), not decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(Exception):
    """The file cannot be used as an image; str(exc) is the reason shown to the person."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


@contextmanager
def open_regular(path: Path):
    """The file opened for reading, only if it is a regular file: a named pipe put where an image
    was would block open() forever, a device would never end. Opening without blocking and then
    checking the opened file (not the name) leaves no moment for the file to be swapped."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:
        raise BadImage("not a file (a folder)") from None
    except OSError as exc:
        raise BadImage(f"unreadable: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device")
            raise BadImage(f"not a regular file ({kind})")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def check_shape(width: int, height: int, side: int | None = None) -> None:
    """Refuse an image that would be enormous once its shorter side is resized to `side`: an
    absurd aspect ratio (a 1 x 2,000,000 PNG of 4 KB has few pixels, so Pillow's decompression
    bomb guard lets it through, and becomes 64 million pixels at 32 px), or more pixels after
    resizing than that guard allows before it."""
    short, long = min(width, height), max(width, height)
    if short < 1 or long > MAX_ASPECT_RATIO * short:
        raise BadImage(f"aspect ratio {width}x{height} is beyond {MAX_ASPECT_RATIO}:1")
    limit = Image.MAX_IMAGE_PIXELS
    if side and limit:
        resized = side * max(side, round(long * side / short))
        if resized > limit:
            raise BadImage(f"too many pixels once resized to {side} px ({resized:,} > {limit:,})")


def probe(path: Path) -> tuple[int, int]:
    """Cheap validity check (header and end-of-stream marker) returning (width, height)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise BadImage("empty file")
        with _decoding_errors():
            with Image.open(fh) as img:
                fmt, dims = img.format, img.size
        check_shape(*dims)
        if _looks_truncated(fh, fmt, size):
            raise BadImage("truncated")
    return dims


def _looks_truncated(fh, fmt: str | None, size: int) -> bool:
    """JPEG and PNG end with a fixed marker; a file cut short lacks it. Reading 16 bytes is cheap."""
    if fmt not in ("JPEG", "PNG"):
        return False
    with _decoding_errors():
        fh.seek(max(0, size - 16))
        tail = fh.read()
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    return b"IEND" not in tail


def load_rgb(path: Path, min_side: int | None = None) -> Image.Image:
    """Decode any supported image to 8-bit RGB, EXIF-rotated.

    min_side lets the JPEG decoder skip detail (draft mode): the result's shorter side stays
    at least min_side pixels, so resizing afterwards loses nothing. The file type and the shape
    are checked here, at decode time, not only when the folder was scanned.
    """
    with open_regular(path) as fh, _decoding_errors():
        with Image.open(fh) as img:
            check_shape(*img.size, min_side)
            if min_side and img.format == "JPEG":
                w, h = img.size
                scale = min_side / min(w, h)
                img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)


@contextmanager
def _decoding_errors():
    """Pillow's many exceptions become one BadImage with a reason a person understands."""
    try:
        yield
    except Image.DecompressionBombError:
        raise BadImage("too many pixels (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc)
        if "truncated" in message.lower() or "premature end" in message.lower():
            raise BadImage("truncated") from None
        raise BadImage(f"corrupt: {message}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit and float images to 8 bits instead of clipping them (convert('RGB') clips)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        lo, hi = float(values.min()), float(values.max())
        values = (values - lo) / (hi - lo if hi > lo else 1.0) * 255.0
    else:
        peak = 65535.0 if values.max() > 255 or img.mode.startswith("I;16") else 255.0
        values = values / peak * 255.0
    gray = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def resize_shorter_side(img: Image.Image, side: int, interpolation: str = "bilinear") -> Image.Image:
    w, h = img.size
    scale = side / min(w, h)
    if scale == 1:
        return img
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return img.resize(size, INTERPOLATIONS[interpolation], reducing_gap=None)


def decode_resized(path: Path, side: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Decode and resize so the shorter side is `side`: a uint8 (3, H, W) tensor."""
    img = resize_shorter_side(load_rgb(path, min_side=side), side, interpolation)
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
