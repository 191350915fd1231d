"""Large JPEGs decoded on the GPU (nvJPEG through torchvision.io.decode_jpeg), resized there to the
shorter side the decoded-image cache keeps, and brought back as uint8 CPU tensors: the same
contract as engine.data.images.decode_resized, measured against it by bench/gpu_round2.py."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from engine.data.images import BadImage, open_regular


def read_bytes(path: Path) -> torch.Tensor:
    with open_regular(path) as fh:  # a named pipe must not block the decode
        data = fh.read()
    if not data:
        raise BadImage("empty file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpegs_resized(paths: list[Path], side: int, device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, H, W) CPU tensors with the shorter side = `side`, EXIF-rotated, in `paths` order.
    Raises BadImage for the whole batch if one file fails: callers fall back to the CPU decoder."""
    datas = [read_bytes(Path(p)) for p in paths]
    try:
        decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except RuntimeError as exc:
        raise BadImage(f"GPU decode failed: {str(exc).splitlines()[0][:160]}") from None
    return [_resize_shorter_side(image, side).cpu() for image in decoded]


def _resize_shorter_side(image: torch.Tensor, side: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = side / min(h, w)
    if scale == 1:
        return image
    size = (max(side, round(h * scale)), max(side, round(w * scale)))
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)
