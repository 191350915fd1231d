"""The models on offer, from both sources, as plain rows: name, source, parameters, input size, pretrained tags.

Parameter counts come from the weights' own metadata where torchvision has it, else from a build on the
meta device (no memory, no weights), and are kept in a small JSON file in the cache folder per source
version, so listing never builds a model twice and never builds the ones a filter leaves out.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torchvision

from engine.atomic import atomic_write_bytes
from engine.errors import UserError
from engine.model import timm_source
from engine.model.architectures import available_archs, default_weights, plain_model
from engine.paths import cache_dir

SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class ModelRow:
    name: str  # what --model takes: resnet18, timm:convnext_atto
    source: str
    parameters: int | None  # for 1000 classes; None when the model cannot be built here
    input_size: int  # the default (pretrained) image size, px
    pretrained: tuple[str, ...]  # tags of the weights that exist (torchvision: weight enum names)

    def to_dict(self) -> dict:
        return {**asdict(self), "pretrained": list(self.pretrained)}


def list_models(source: str | None = None, text: str = "", pretrained_only: bool = False,
                progress: Callable[[int, int], None] | None = None) -> list[ModelRow]:
    """Rows for the source(s), the names containing `text` (case-insensitive), optionally only those
    with pretrained weights."""
    if source is not None and source not in SOURCES:
        raise UserError(f"unknown model source '{source}' (use {' or '.join(SOURCES)})")
    text = text.lower()
    wanted: list[tuple[str, str]] = []
    for src in (source,) if source else SOURCES:
        wanted += [(src, name) for name in _names(src) if text in name.lower()]
    counts = _ParameterCounts()
    rows = []
    for i, (src, name) in enumerate(wanted, 1):
        tags = _torchvision_tags(name) if src == "torchvision" else _timm_tags(name)
        if pretrained_only and not tags:
            continue
        rows.append(ModelRow(name, src, counts.get(src, name), _input_size(src, name), tags))
        if progress:
            progress(i, len(wanted))
    counts.save()
    return rows


def _names(source: str) -> list[str]:
    return available_archs(source)


def _torchvision_tags(arch: str) -> tuple[str, ...]:
    try:
        return tuple(w.name for w in torchvision.models.get_model_weights(arch))
    except (ValueError, AttributeError):
        return ()


@functools.cache
def _timm_pretrained() -> dict[str, tuple[str, ...]]:
    import timm

    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained():
        base, _, tag = full.partition(".")
        tags.setdefault(base, []).append(tag)
    return {base: tuple(t) for base, t in tags.items()}


def _timm_tags(arch: str) -> tuple[str, ...]:
    return _timm_pretrained().get(timm_source.model_name(arch), ())


def _input_size(source: str, name: str) -> int:
    if source == "timm":
        return int((timm_source.pretrained_cfg(name).get("input_size") or (3, 224, 224))[-1])
    weights = default_weights(name)
    crop = weights.transforms().crop_size if weights is not None else 224
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


class _ParameterCounts:
    """Parameter counts by name, remembered in the cache folder per torchvision and timm version."""

    def __init__(self) -> None:
        self.path = cache_dir() / "model_parameters.json"
        self.version = f"torchvision {torchvision.__version__}, timm {_timm_version()}"
        self.counts: dict[str, int | None] = {}
        self.changed = False
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("version") == self.version and isinstance(stored.get("counts"), dict):
                self.counts = stored["counts"]
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or an unreadable one: counted again

    def get(self, source: str, name: str) -> int | None:
        if name not in self.counts:
            self.counts[name] = _count(source, name)
            self.changed = True
        value = self.counts[name]
        return value if isinstance(value, int) else None

    def save(self) -> None:
        if not self.changed:
            return
        try:
            data = json.dumps({"version": self.version, "counts": self.counts}, sort_keys=True).encode()
            atomic_write_bytes(self.path, data)
        except OSError:
            pass  # only an optimisation: counted again next time


def _timm_version() -> str:
    try:
        import timm
    except ImportError:
        return "none"
    return timm.__version__


def _count(source: str, name: str) -> int | None:
    if source == "timm":
        try:
            return timm_source.parameter_count(name)
        except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device is listed without a count
            return None
    weights = default_weights(name)
    if weights is not None and isinstance(weights.meta.get("num_params"), int):
        return weights.meta["num_params"]
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in plain_model(name, 1000).parameters())
    except (NotImplementedError, RuntimeError):
        return None
