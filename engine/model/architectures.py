"""torchvision classifiers by name: build, load weights, replace the head, describe the layer tree.

The head (the final Linear; SqueezeNet's final 1x1 convolution) is replaced in place, so a trained
model is `torchvision.models.get_model(arch, num_classes=K, **model_kwargs(arch, image_size))` and
plain PyTorch can load its state dict. The keyword arguments are empty for most architectures; GoogLeNet
and Inception v3 are built as torchvision builds its pretrained GoogLeNet (without auxiliary heads,
with `transform_input=True`), a ViT for its image size, MaxViT for its input size. Checkpoints carry
them ("model_kwargs").

Every architecture offered (`available_archs`) has a known image-size rule (`min_image_size`,
`check_image_size`), and tests/test_architectures.py trains each one a step at its smallest size.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from engine.model import timm_source
from engine.model.checkpoint import load_state_dict_file
from engine.model.constructors import builder_kwargs, model_kwargs  # noqa: F401 - re-exported
from engine.data.dataset import Preprocessing
from engine.errors import UserError, WeightsUnavailable

# Containers whose children are the "stages" presets work on (EfficientNet's features.0..8,
# RegNet's trunk_output.block1..4, ViT's encoder.layers.*); other models' top-level children are.
_STAGE_CONTAINERS = ("features", "trunk_output", "encoder", "encoder.layers")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
FEATURED_ARCHS = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenet_v3_small",
                  "mobilenet_v3_large", "convnext_tiny", "regnet_y_400mf", "vit_b_16")


@dataclass(frozen=True)
class _SizeRule:
    minimum: int  # px, before rounding up to `multiple`
    multiple: int  # the size must be a multiple of this (1: any size)
    reason: str  # why, for the person; "{arch}" is filled in


# Smallest size Transfer Studio trains at (DataConfig's own floor); most convolutional networks pad
# every convolution and pool adaptively, so they work at any size from here.
MIN_IMAGE_SIZE = 16
_ANY_SIZE = _SizeRule(MIN_IMAGE_SIZE, 1, "{arch} works at any size from 16 px, the smallest Transfer Studio trains at")
# Measured (a forward pass at every size from 1 to 128 px) and checked by tests/test_architectures.py.
# Families by name prefix, the longest matching prefix wins. An architecture of a newer torchvision
# that matches none is not offered until its rule is known and tested.
_SIZE_RULES: dict[str, _SizeRule] = {
    "resnet": _ANY_SIZE, "resnext": _ANY_SIZE, "wide_resnet": _ANY_SIZE, "efficientnet_": _ANY_SIZE,
    "mobilenet_": _ANY_SIZE, "mnasnet": _ANY_SIZE, "regnet_": _ANY_SIZE, "shufflenet_v2_": _ANY_SIZE,
    "googlenet": _ANY_SIZE,
    "swin_": _SizeRule(MIN_IMAGE_SIZE, 1, "{arch} pads its feature maps to whole windows, so it works at any size "
                                           "from 16 px, the smallest Transfer Studio trains at"),
    "alexnet": _SizeRule(63, 1, "{arch}'s unpadded convolutions and poolings need at least 63 px"),
    "convnext_": _SizeRule(32, 1, "{arch} downsamples by 32 with unpadded strided convolutions, so it needs at least 32 px"),
    "densenet": _SizeRule(29, 1, "{arch}'s stem and transition poolings need at least 29 px"),
    "inception_v3": _SizeRule(75, 1, "{arch}'s unpadded convolutions and poolings need at least 75 px"),
    "squeezenet1_0": _SizeRule(21, 1, "{arch}'s unpadded stem and poolings need at least 21 px"),
    "squeezenet1_1": _SizeRule(17, 1, "{arch}'s unpadded stem and poolings need at least 17 px"),
    "vgg": _SizeRule(32, 1, "{arch}'s five 2x2 poolings need at least 32 px"),
    # ViT: the image is cut into patches; the position embeddings are made for the image size.
    "vit_b_16": _SizeRule(16, 16, "{arch} cuts the image into 16 px patches, so its size must be a multiple of 16 px"),
    "vit_l_16": _SizeRule(16, 16, "{arch} cuts the image into 16 px patches, so its size must be a multiple of 16 px"),
    "vit_b_32": _SizeRule(32, 32, "{arch} cuts the image into 32 px patches, so its size must be a multiple of 32 px"),
    "vit_l_32": _SizeRule(32, 32, "{arch} cuts the image into 32 px patches, so its size must be a multiple of 32 px"),
    "vit_h_14": _SizeRule(16, 14, "{arch} cuts the image into 14 px patches, so its size must be a multiple of 14 px"),
    # MaxViT attends within 7x7 windows and a 7x7 grid at every stage, down to 1/32 scale: 7 * 32 = 224.
    "maxvit_t": _SizeRule(224, 224, "{arch} splits its feature maps into 7x7 windows down to 1/32 scale, "
                                     "so its size must be a multiple of 224 px"),
}


def _size_rule(arch: str) -> _SizeRule | None:
    if timm_source.is_timm(arch):
        return _SizeRule(*timm_source.size_rule(arch))
    matches = [prefix for prefix in _SIZE_RULES if arch.startswith(prefix)]
    return _SIZE_RULES[max(matches, key=len)] if matches else None


def available_archs(source: str = "torchvision") -> list[str]:
    """The architectures offered everywhere (window, CLI): torchvision's classifiers whose image-size
    rule is known; each is trained and exported by tests/test_architectures.py. `source="timm"`: every
    timm model, named `timm:NAME` (tests/test_timm_backbones.py trains a sample of families)."""
    if source == "timm":
        return timm_source.available_archs()
    return sorted(a for a in torchvision.models.list_models(module=torchvision.models) if _size_rule(a) is not None)


def min_image_size(arch: str) -> tuple[int, str]:
    """The smallest image size `arch` trains at, and a one-line reason for the person."""
    check_arch(arch)
    rule = _size_rule(arch)
    return math.ceil(rule.minimum / rule.multiple) * rule.multiple, rule.reason.format(arch=arch)


def image_size_step(arch: str) -> int:
    """Valid sizes from the minimum on are multiples of this (1: any size); a spin box's single step."""
    check_arch(arch)
    return _size_rule(arch).multiple


def valid_image_size(arch: str, image_size: int) -> int:
    """The nearest valid image size for `arch` that is at least `image_size`."""
    smallest, _ = min_image_size(arch)
    multiple = image_size_step(arch)
    return max(smallest, math.ceil(image_size / multiple) * multiple)


def check_image_size(arch: str, image_size: int) -> None:
    """Raise a one-line UserError when `arch` cannot run on images of `image_size` px."""
    smallest, reason = min_image_size(arch)
    if image_size < smallest:
        raise UserError(f"image size {image_size} px is too small for {arch}: {reason}")
    if image_size % image_size_step(arch):
        raise UserError(f"image size {image_size} px does not fit {arch}: {reason} "
                        f"(next valid size: {valid_image_size(arch, image_size)} px)")


@functools.cache
def _offered() -> frozenset[str]:
    """available_archs() once: the window checks the architecture on every edit (5 ms a listing)."""
    return frozenset(available_archs())


def check_arch(arch: str) -> None:
    if timm_source.is_timm(arch):
        return timm_source.check_arch(arch)
    if arch not in _offered():
        close = difflib.get_close_matches(arch, sorted(_offered()), n=3)
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
    image_size: int = 224  # what the model was built for (a ViT's position embeddings depend on it)
    # True when the head maps the pooled feature vector to logits (a Linear), so it can train on cached
    # features; SqueezeNet's head is a 1x1 convolution followed by ReLU and pooling, so it cannot.
    head_is_linear: bool = True

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
    """The last Linear; in a model without one (SqueezeNet), the last convolution: its classifier."""
    if timm_source.is_timm_model(model):
        return timm_source.head_name(model)
    last = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
        elif isinstance(module, nn.Conv2d):
            last_conv = name
    if last is None and last_conv is not None and last_conv.startswith("classifier."):
        return last_conv
    if last is None:
        raise UserError(f"{type(model).__name__} has no Linear classification head")
    return last


def describe(model: nn.Module, arch: str, num_classes: int, image_size: int = 224) -> ModelInfo:
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
    if timm_source.is_timm_model(model):  # the model's own stages (timm's coarse group_matcher)
        groups = timm_source.stage_groups(model, head)
        stages = tuple(stage for group in groups for stage in group)
    else:
        stages = _stages(model, head)
        groups = _stage_groups(model, stages)
    return ModelInfo(arch, num_classes, head, stages, groups, tuple(layers), parameter_modules,
                     image_size=image_size, head_is_linear=isinstance(modules[head], nn.Linear))


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
    """The weights' own evaluation transform (resize ratio and filter, crop, mean, std), scaled to image_size."""
    if timm_source.is_timm(arch):
        return timm_source.preprocessing_for(arch, image_size)
    weights = default_weights(arch)
    resize_ratio, mean, std = 256 / 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    interpolation = "bilinear"
    if weights is not None:
        t = weights.transforms()
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
        crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
        resize_ratio, mean, std = resize / crop, tuple(t.mean), tuple(t.std)
        interpolation = t.interpolation.value  # bicubic for EfficientNet-B0..B7, Swin, MaxViT, ViT-H
    return Preprocessing(resize=round(image_size * resize_ratio), crop=image_size, mean=mean, std=std,
                         interpolation=interpolation)


def weights_cache_path(arch: str) -> Path | None:
    if timm_source.is_timm(arch):
        return timm_source.weights_cache_path(arch)
    weights = default_weights(arch)
    if weights is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def plain_model(arch: str, num_classes: int, image_size: int = 224, for_weights: bool = False) -> nn.Module:
    """`torchvision.models.<arch>(num_classes=K, **builder_kwargs(arch, image_size))`, untrained;
    `for_weights`: to load a state dict into, skipping initialisation where torchvision allows it."""
    if timm_source.is_timm(arch):
        return timm_source.plain_model(arch, num_classes, image_size)
    kwargs = model_kwargs(arch, image_size) if for_weights else builder_kwargs(arch, image_size)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if isinstance(model, torchvision.models.MNASNet):
        # Bound to this instance (a deepcopy rebinds it to the copy); the class is untouched.
        model._load_from_state_dict = types.MethodType(_load_unversioned_mnasnet_state, model)
    return model


def _load_unversioned_mnasnet_state(self, state_dict, prefix, local_metadata, *args) -> None:
    """MNASNet refuses a state dict without the `_metadata` version torch.save keeps, and safetensors
    files, checkpoints (plain dicts) and filtered copies have none: read such a state dict as the
    current version, which is what every model built here saves (version 1 is MNASNet's original stem)."""
    if local_metadata.get("version") is None:
        local_metadata = {**local_metadata, "version": type(self)._version}
    type(self)._load_from_state_dict(self, state_dict, prefix, local_metadata, *args)


# Beyond this the head alone outgrows memory (1e11 classes: terabytes); engine.config's classes rule agrees.
MAX_CLASSES = 100_000


def check_class_count(num_classes: int, minimum: int = 2) -> None:
    """Refuse, in one line and before anything is allocated, a class count no model here can have
    (`minimum` 1: a regression's one output, a multi-label set of one label)."""
    if num_classes < minimum:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    if num_classes > MAX_CLASSES:
        raise UserError(f"{num_classes:,} classes are more than the {MAX_CLASSES:,} Transfer Studio trains "
                        f"(the head alone would outgrow memory); merge classes or split the dataset")


def build_model(arch: str, num_classes: int, weights: str = "imagenet", image_size: int = 224,
                min_classes: int = 2) -> BuiltModel:
    check_arch(arch)
    check_class_count(num_classes, min_classes)
    check_image_size(arch, image_size)
    if timm_source.is_timm(arch):  # timm's builder, weights through the safe loader
        model, notes = timm_source.build(arch, num_classes, weights, image_size)
        return BuiltModel(model, describe(model, arch, num_classes, image_size), preprocessing_for(arch, image_size), notes)
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
    return BuiltModel(model, describe(model, arch, num_classes, image_size), preprocessing_for(arch, image_size), notes)


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
    metadata = getattr(state, "_metadata", None)  # module versions, which filtering below would lose
    notes = []
    aux = sorted({k.split(".")[0] for k in state if k.startswith(_AUX_PREFIXES) and k not in expected})
    if aux:
        notes.append(f"auxiliary head(s) of {source} dropped ({', '.join(aux)}): only the main classifier trains")
        state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES) or k in expected}
    state, resized = _fit_position_embedding(model, state)
    if resized:
        notes.append(f"position embeddings of {source} {resized}")
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
    # NaN or inf weights would train into a NaN loss that reads as a too-high LR: refused here.
    non_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if non_finite:
        raise UserError(f"{source} has non-finite weights (NaN or inf) in {len(non_finite)} tensor(s): "
                        f"{', '.join(non_finite[:3])}{' ...' if len(non_finite) > 3 else ''}")
    if metadata is not None:
        state = OrderedDict(state)
        state._metadata = metadata
    model.load_state_dict(state, strict=False)
    return notes


# GoogLeNet's and Inception v3's auxiliary classifiers: in torchvision's ImageNet weights, not in our models.
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def _fit_position_embedding(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A ViT's weights for another image size: interpolate the position embeddings of the patch grid
    (as torchvision's `interpolate_embeddings` does), so a ViT trains from ImageNet at any valid size."""
    key = "encoder.pos_embedding"
    if not isinstance(model, torchvision.models.VisionTransformer) or key not in state:
        return state, ""
    old, new = state[key], model.state_dict()[key]
    if old.shape == new.shape or old.dim() != 3 or old.shape[2] != new.shape[2]:
        return state, ""  # same size, or a mismatch that the shape check reports
    old_side = math.isqrt(old.shape[1] - 1)
    if old_side * old_side != old.shape[1] - 1:
        return state, ""
    from torchvision.models.vision_transformer import interpolate_embeddings

    state = interpolate_embeddings(model.image_size, model.patch_size, dict(state))
    new_side = model.image_size // model.patch_size
    return state, (f"resized from a {old_side}x{old_side} to a {new_side}x{new_side} patch grid "
                   f"({old_side * model.patch_size} to {model.image_size} px images)")


def model_classes(model: nn.Module) -> int:
    head = model.get_submodule(find_head(model))
    return head.out_features if isinstance(head, nn.Linear) else head.out_channels
