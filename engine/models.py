"""torchvision classifiers by name: build, load weights, replace the head, describe the layer tree.

The head (the final Linear) is replaced in place, so a trained model's state dict has exactly the
keys of `torchvision.models.<arch>(num_classes=K)` and plain PyTorch can load it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from .checkpoint import load_state_dict_file
from .data import Preprocessing
from .errors import UserError, WeightsUnavailable

# Containers whose children are the "stages" presets work on (EfficientNet's features.0..8,
# RegNet's trunk_output.block1..4, ViT's encoder.layers.*); other models' top-level children are.
_STAGE_CONTAINERS = ("features", "trunk_output", "encoder", "encoder.layers")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
FEATURED_ARCHS = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenet_v3_small",
                  "mobilenet_v3_large", "convnext_tiny", "regnet_y_400mf", "vit_b_16")


def available_archs() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    names = available_archs()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown architecture '{arch}'{hint}")


@dataclass(frozen=True)
class LayerInfo:
    """One module of the tree, as plain data a widget can show."""

    name: str  # dotted, as named_modules(); "" is the model itself
    type: str
    params: int  # parameters in this module and below
    own_params: int  # parameters registered directly on this module
    parent: str | None
    is_norm: bool


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    num_classes: int
    head: str  # dotted name of the classification Linear
    stages: tuple[str, ...]  # input to output, the head last
    stage_groups: tuple[tuple[str, ...], ...]  # stages that share one LR step (the stem's conv and norm)
    layers: tuple[LayerInfo, ...]
    parameter_modules: tuple[tuple[str, str, int], ...]  # (parameter name, owning module, numel)

    @property
    def total_params(self) -> int:
        return sum(n for _, _, n in self.parameter_modules)

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def check_module(self, name: str) -> None:
        if name not in {layer.name for layer in self.layers}:
            names = [layer.name for layer in self.layers]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"{self.arch} has no module named '{name}'{hint}")


@dataclass
class BuiltModel:
    model: nn.Module
    info: ModelInfo
    preprocessing: Preprocessing
    notes: list[str]  # what happened while loading weights, for the person


def find_head(model: nn.Module) -> str:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise UserError(f"{type(model).__name__} has no Linear classification head")
    return last


def describe(model: nn.Module, arch: str, num_classes: int) -> ModelInfo:
    modules = dict(model.named_modules())
    owner: dict[str, tuple[str, int]] = {}
    for module_name, module in modules.items():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            owner[full] = (module_name, param.numel())
    parameter_modules = tuple((name, mod, n) for name, (mod, n) in owner.items())
    layers = []
    for name, module in modules.items():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        layers.append(LayerInfo(
            name=name,
            type=type(module).__name__,
            params=sum(p.numel() for p in module.parameters()),
            own_params=own,
            parent=None if name == "" else name.rpartition(".")[0],
            is_norm=isinstance(module, NORM_TYPES),
        ))
    head = find_head(model)
    stages = _stages(model, head)
    return ModelInfo(arch, num_classes, head, stages, _stage_groups(model, stages), tuple(layers), parameter_modules)


def _stages(model: nn.Module, head: str) -> tuple[str, ...]:
    """The units presets freeze and ramp, input to output: parameterised top-level children, with
    the big trunk containers opened up, and the head's container opened so the head stands alone
    (MobileNetV3's classifier.0 is a stage of its own, before the head classifier.3)."""

    def expand(prefix: str, module: nn.Module) -> list[str]:
        out = []
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if not any(True for _ in child.parameters()):
                continue
            if name in _STAGE_CONTAINERS or head.startswith(name + "."):
                out.extend(expand(name, child))
            else:
                out.append(name)
        return out

    return tuple(expand("", model))


def _stage_groups(model: nn.Module, stages: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Each stage is its own group, except the stem: the single layers before the first block
    (ResNet's conv1 and bn1) act as one stage for the LR ramp and for gradual unfreezing."""
    groups: list[tuple[str, ...]] = []
    stem: list[str] = []
    for i, stage in enumerate(stages):
        is_leaf = not any(True for _ in model.get_submodule(stage).children())
        if is_leaf and not groups and i < len(stages) - 1:
            stem.append(stage)
            continue
        if stem:
            groups.append(tuple(stem))
            stem = []
        groups.append((stage,))
    return tuple(groups)


def default_weights(arch: str):
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        return None


def preprocessing_for(arch: str, image_size: int) -> Preprocessing:
    """The weights' own evaluation transform (resize ratio, crop, mean, std), scaled to image_size."""
    weights = default_weights(arch)
    resize_ratio, mean, std = 256 / 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if weights is not None:
        t = weights.transforms()
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
        crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
        resize_ratio, mean, std = resize / crop, tuple(t.mean), tuple(t.std)
    return Preprocessing(resize=round(image_size * resize_ratio), crop=image_size, mean=mean, std=std)


def weights_cache_path(arch: str) -> Path | None:
    weights = default_weights(arch)
    if weights is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def plain_model(arch: str, num_classes: int, image_size: int = 224) -> nn.Module:
    """`torchvision.models.<arch>(num_classes=K)`, untrained; ViTs are built for their image size."""
    kwargs = {"image_size": image_size} if arch.startswith("vit_") else {}
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def build_model(arch: str, num_classes: int, weights: str = "imagenet", image_size: int = 224) -> BuiltModel:
    check_arch(arch)
    if num_classes < 2:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    if arch.startswith("vit_") and weights != "none" and image_size != 224:
        raise UserError(f"{arch} with pretrained weights needs --image-size 224, got {image_size}")
    model = plain_model(arch, num_classes, image_size)
    notes: list[str] = []
    if weights == "imagenet":
        state = _imagenet_state_dict(arch)
        notes.append(f"ImageNet weights from {weights_cache_path(arch)}")
        notes += load_backbone_weights(model, state, source="ImageNet weights")
    elif weights != "none":
        state = load_state_dict_file(Path(weights))
        notes.append(f"weights from {weights}")
        notes += load_backbone_weights(model, state, source=str(weights))
    return BuiltModel(model, describe(model, arch, num_classes), preprocessing_for(arch, image_size), notes)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    weights = default_weights(arch)
    if weights is None:
        raise UserError(f"torchvision has no pretrained weights for {arch}; use --weights none or a file")
    path = weights_cache_path(arch)
    if not path.exists():
        try:
            torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=False)
        except Exception as exc:  # any network failure means the same thing to the person
            raise WeightsUnavailable(
                f"ImageNet weights for {arch} are not cached and could not be downloaded ({type(exc).__name__}): "
                f"put {path.name} (from {weights.url}) into {path.parent}, or use weights 'none' or a file"
            ) from None
    return load_state_dict_file(path)


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load everything but a head of a different shape; missing or unexpected backbone keys are an error."""
    head = find_head(model)
    expected = model.state_dict()
    head_keys = {k for k in expected if k.startswith(head + ".")}
    notes = []
    dropped = [k for k in head_keys if k in state and state[k].shape != expected[k].shape]
    if dropped:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in sorted(dropped))
        notes.append(f"head of {source} dropped ({shapes}): a new {head} for {model_classes(model)} classes")
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(expected) - set(state) - head_keys)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
        raise UserError(f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}")
    bad_shapes = [k for k in state if state[k].shape != expected[k].shape]
    if bad_shapes:
        raise UserError(f"{source} has tensors of the wrong shape: {', '.join(bad_shapes[:6])}")
    model.load_state_dict(state, strict=False)
    return notes


def model_classes(model: nn.Module) -> int:
    return model.get_submodule(find_head(model)).out_features
