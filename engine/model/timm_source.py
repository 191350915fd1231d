"""timm as a second model source: `timm:NAME` (optionally `timm:NAME.TAG`) everywhere an architecture is named.

A trained model is `timm.create_model(NAME, num_classes=K, **builder_kwargs)` and loads its checkpoint's
state dict with `load_state_dict(strict=True)`. Weights never go through timm's own file loading (it
unpickles without `weights_only`): the pretrained file is found in the Hugging Face cache (or torch's hub
cache for older URL-only weights), read by the project's safe loader, and passed to timm as a state dict,
so timm still applies the model's own checkpoint filter (a ViT's position embeddings for another size).

Stages come from the model's own `group_matcher(coarse=True)`, so presets act on what timm calls stages.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from pathlib import Path

import torch
from torch import nn

from engine.data.dataset import Preprocessing
from engine.data.images import INTERPOLATIONS
from engine.errors import UserError, WeightsUnavailable
from engine.model.checkpoint import load_state_dict_file

PREFIX = "timm:"
# Most timm convolutional networks downsample by 32 and pad every convolution.
CONV_MIN_SIZE = 32
# Weight file names timm publishes on the Hugging Face hub, in the order timm tries them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PRETRAINED_WORDS = ("imagenet", "pretrained")  # both name the pretrained config's weights


def is_timm(arch: str) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def model_name(arch: str) -> str:
    """`timm:convnext_atto.d2_in1k` -> `convnext_atto.d2_in1k` (what timm.create_model takes)."""
    return arch[len(PREFIX):]


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm models need the timm package: pip install 'timm>=1.0'") from None
    return timm


@functools.cache
def _names() -> tuple[str, ...]:
    return tuple(_timm().list_models())


def available_archs() -> list[str]:
    return [PREFIX + name for name in _names()]


def check_arch(arch: str) -> None:
    name = model_name(arch)
    base, _, tag = name.partition(".")
    if base not in set(_names()):
        close = difflib.get_close_matches(base, _names(), n=3)
        hint = f" (did you mean {', '.join(PREFIX + c for c in close)}?)" if close else ""
        raise UserError(f"unknown timm model '{base}'{hint}; `transfer-studio models --source timm` lists them")
    if tag and name not in set(_timm().list_pretrained(base + ".*")):
        tags = [t.partition(".")[2] for t in _timm().list_pretrained(base + ".*")]
        raise UserError(f"timm model {base} has no pretrained tag '{tag}' (tags: {', '.join(tags) or 'none'})")
    classifier = _cfg_value(arch, "classifier")
    if isinstance(classifier, (tuple, list)) and len(classifier) > 1:
        raise UserError(f"{arch} has {len(classifier)} classification heads (distillation); Transfer Studio trains "
                        f"models with one head")


def pretrained_cfg(arch: str) -> dict:
    """timm's pretrained config for the model (its default tag, or the tag named), as a plain dict."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name(arch), allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


def _cfg_value(arch: str, key: str, default=None):
    return pretrained_cfg(arch).get(key, default) or default


def pretrained_tag(arch: str) -> str | None:
    cfg = pretrained_cfg(arch)
    return cfg.get("tag") if (cfg.get("hf_hub_id") or cfg.get("url")) else None


# --- building ---------------------------------------------------------------------------------


def _takes_image_size(arch: str) -> bool:
    """Models whose shapes depend on the image size (ViTs' position embeddings, attention biases)
    are built for it; timm marks them with fixed_input_size."""
    return bool(_cfg_value(arch, "fixed_input_size", False))


def builder_kwargs(arch: str, image_size: int = 224) -> dict:
    """What `timm.create_model(NAME, num_classes=K, ...)` needs besides K for our model."""
    return {"img_size": image_size} if _takes_image_size(arch) else {}


def plain_model(arch: str, num_classes: int, image_size: int = 224) -> nn.Module:
    """`timm.create_model(NAME, num_classes=K, **builder_kwargs(arch, image_size))`, untrained."""
    return _timm().create_model(model_name(arch), pretrained=False, num_classes=num_classes,
                                **builder_kwargs(arch, image_size))


def head_name(model: nn.Module) -> str:
    """The classifier timm itself names (`pretrained_cfg['classifier']`)."""
    classifier = model.pretrained_cfg.get("classifier")
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    return classifier


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "forward_head")


def trunk_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the head sees: timm's own split of forward into features and head."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


# --- image sizes ------------------------------------------------------------------------------


@functools.cache
def _patch_size(arch: str) -> int | None:
    with torch.device("meta"):
        model = plain_model(arch, 2, int(_cfg_value(arch, "input_size", (3, 224, 224))[-1]))
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    return int(patch) if isinstance(patch, int) else None


def size_rule(arch: str) -> tuple[int, int, str]:
    """(minimum px, multiple, reason) for a timm model."""
    patch = _patch_size(arch)
    if patch:
        return patch, patch, f"{arch} cuts the image into {patch} px patches, so its size must be a multiple of {patch} px"
    if _takes_image_size(arch):
        return CONV_MIN_SIZE, CONV_MIN_SIZE, (f"{arch} is built for its image size down to 1/32 scale, so its size "
                                              f"must be a multiple of {CONV_MIN_SIZE} px")
    return CONV_MIN_SIZE, 1, f"{arch} downsamples by 32, so it needs at least {CONV_MIN_SIZE} px"


def preprocessing_for(arch: str, image_size: int) -> Preprocessing:
    """The pretrained config's evaluation transform (crop_pct, interpolation, mean, std), scaled to image_size."""
    cfg = pretrained_cfg(arch)
    crop_pct = cfg.get("crop_pct") or 0.875
    mean = tuple(float(v) for v in cfg.get("mean") or (0.485, 0.456, 0.406))
    std = tuple(float(v) for v in cfg.get("std") or (0.229, 0.224, 0.225))
    if len(mean) != 3 or len(std) != 3:  # a grayscale model: its one channel's statistics for each of three
        mean, std = mean[:1] * 3, std[:1] * 3
    interpolation = cfg.get("interpolation") or "bicubic"  # timm's resolve_data_config default
    if interpolation not in INTERPOLATIONS:  # "random" is a training-time choice; evaluate as timm's default does
        interpolation = "bicubic"
    return Preprocessing(resize=max(image_size, math.floor(image_size / crop_pct)), crop=image_size, mean=mean, std=std,
                         interpolation=interpolation)


def source_record(arch: str, weights: str, image_size: int = 224) -> dict:
    """What a checkpoint records so that `timm.create_model(model, num_classes=K, **kwargs)` rebuilds it."""
    import timm

    cfg = pretrained_cfg(arch)
    return {"name": "timm", "model": model_name(arch).partition(".")[0], "timm_version": timm.__version__,
            "pretrained_tag": cfg.get("tag") if weights == "imagenet" else None,
            "interpolation": cfg.get("interpolation"), "crop_pct": cfg.get("crop_pct"),
            "input_size": list(cfg.get("input_size") or ()), "model_kwargs": builder_kwargs(arch, image_size)}


def checkpoint_source_fields(arch: str, config: dict) -> dict:
    """A timm model's checkpoint also records {"source": source_record(...)}; others record nothing more."""
    if not is_timm(arch):
        return {}
    weights = (config.get("model") or {}).get("weights", "none")
    image_size = int((config.get("data") or {}).get("image_size", 224))
    return {"source": source_record(arch, "imagenet" if weights in PRETRAINED_WORDS else weights, image_size)}


# --- weights ----------------------------------------------------------------------------------


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def weights_cache_path(arch: str) -> Path | None:
    """The cached pretrained file when it is there; else where it would be (None: no pretrained weights)."""
    cfg = pretrained_cfg(arch)
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HF_WEIGHT_FILES
        for filename in files:
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        return hf_cache_dir() / ("models--" + hub_id.replace("/", "--")) / files[0]
    if url:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return None


def pretrained_state_dict(arch: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The pretrained weights from the local caches; downloaded only when HF_HUB_OFFLINE is unset."""
    cfg = pretrained_cfg(arch)
    path = weights_cache_path(arch)
    if path is None:
        raise UserError(f"timm has no pretrained weights for {arch}; use weights 'none' or a file")
    if not path.is_file():
        path = _download(arch, cfg, path)
    return load_state_dict_file(path), path


def _download(arch: str, cfg: dict, expected: Path) -> Path:
    hub_id = cfg.get("hf_hub_id")
    why = "HF_HUB_OFFLINE is set" if _offline() else ""
    if not why:
        try:
            if hub_id:
                from huggingface_hub import hf_hub_download

                filename = cfg.get("hf_hub_filename") or HF_WEIGHT_FILES[0]
                return Path(hf_hub_download(hub_id, filename))
            torch.hub.load_state_dict_from_url(cfg["url"], progress=False, check_hash=False, weights_only=True)
            return expected
        except Exception as exc:  # noqa: BLE001 - any network failure means the same thing to the person
            why = f"could not be downloaded ({type(exc).__name__})"
    where = f"the Hugging Face cache {hf_cache_dir()} (repo {hub_id})" if hub_id else f"{expected.parent}"
    raise WeightsUnavailable(f"pretrained weights for {arch} are not cached and {why}: put {expected.name} into "
                             f"{where}, or use weights 'none' or a .safetensors/.pth file")


def build(arch: str, num_classes: int, weights: str, image_size: int) -> tuple[nn.Module, list[str]]:
    """The model with `weights`: 'imagenet'/'pretrained' (the pretrained config's file, from the local
    cache first), 'none', or a .safetensors/.pth/.pt file read by the project's safe loader."""
    if weights == "none":
        return plain_model(arch, num_classes, image_size), []
    if weights in PRETRAINED_WORDS:
        state, path = pretrained_state_dict(arch)
        source = f"pretrained weights {model_name(arch).partition('.')[0]}.{pretrained_tag(arch)}"
        notes = [f"{source} from {path}"]
    else:
        state, source = load_state_dict_file(Path(weights)), str(weights)
        notes = [f"weights from {weights}"]
    _check_finite(state, source)
    model, more = build_with_weights(arch, num_classes, image_size, state, source)
    return model, notes + more


def _check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    # NaN or inf weights would train into a NaN loss that reads as a too-high LR.
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise UserError(f"{source} has non-finite weights (NaN or inf) in {len(bad)} tensor(s): "
                        f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")


def build_with_weights(arch: str, num_classes: int, image_size: int, state: dict[str, torch.Tensor],
                       source: str) -> tuple[nn.Module, list[str]]:
    """The model for `num_classes` with `state` loaded through timm (its checkpoint filter, strict keys).
    A head for another number of classes is dropped and made new, with a note."""
    timm = _timm()
    name = model_name(arch)
    kwargs = builder_kwargs(arch, image_size)
    with torch.device("meta"):
        shapes = plain_model(arch, num_classes, image_size)
    head = head_name(shapes)
    expected = {k: v.shape for k, v in shapes.state_dict().items() if k.startswith(head + ".")}
    notes, new_head = [], False
    state = dict(state)
    mismatched = {k: tuple(state[k].shape) for k in expected if k in state and state[k].shape != expected[k]}
    if mismatched or not any(k in state for k in expected):
        shapes_text = ", ".join(f"{k} {s}" for k, s in sorted(mismatched.items())) or "none in the file"
        notes.append(f"head of {source} dropped ({shapes_text}): a new {head} for {num_classes} classes")
        for key, shape in expected.items():  # placeholders, so every other key is still loaded strictly
            state[key] = torch.zeros(shape)
        new_head = True
    overlay = {"state_dict": state, "num_classes": num_classes}
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                                  **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"{source} does not fit {arch}: {detail[:200]}") from None
    for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # the model must not keep a second copy of the weights
    if new_head:
        # timm's own initialisation for the new head; reset_classifier may remake more than the classifier
        # (EfficientViT's BatchNorm before it), so everything else gets its loaded values back.
        kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}
        model.reset_classifier(num_classes)
        model.load_state_dict(kept, strict=False)
    return model, notes


# --- stages -----------------------------------------------------------------------------------


def stage_groups(model: nn.Module, head: str) -> tuple[tuple[str, ...], ...]:
    """timm's coarse groups (stem, stages, final norm) as module names, input to output, the head last.

    A group is the largest modules whose parameters all fall in it. Parameters registered on the
    model itself (a ViT's class token) and those no group claims (timm maps them to the head's group:
    a neck, a final head norm) are left to no stage: the plan shows them as unassigned."""
    from timm.models._manipulate import group_parameters

    param_group = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    head_group = max(param_group.values(), default=0)
    groups_under: dict[str, set[int]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            groups_under.setdefault(".".join(parts[:i]), set()).add(param_group[name])
    chosen: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        ids = groups_under.get(name)
        if not name or ids is None or len(ids) != 1 or name == head or head.startswith(name + "."):
            continue
        parent = name.rpartition(".")[0]
        if parent and len(groups_under.get(parent, ())) == 1 and not head.startswith(parent + "."):
            continue  # a larger module of the same group is chosen instead
        group = next(iter(ids))
        if group != head_group:
            chosen.setdefault(group, []).append(name)
    return tuple(tuple(chosen[g]) for g in sorted(chosen)) + ((head,),)


# --- listing ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def parameter_count(arch: str, num_classes: int = 1000) -> int:
    """Parameters of the model, from a build on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = plain_model(arch, num_classes, int(_cfg_value(arch, "input_size", (3, 224, 224))[-1]))
    return sum(p.numel() for p in model.parameters())
