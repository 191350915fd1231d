"""Grad-CAM: where in the image the evidence for a class was.

The activation of one layer (by default the last stage before the head) is kept by a forward
hook, and its gradient for the target class is taken with torch.autograd.grad. A stage whose map is
a single cell at the image size (resnet's layer4 at 32 px) cannot say where: the default then moves to
the deepest stage before it with at least 2x2 cells, and the result says so. The input tensor
requires grad, so every activation carries a gradient even through a frozen backbone: no
parameter's requires_grad changes, no .grad is written, and the model runs in eval mode (norm
statistics untouched) and is put back as it was. The map is mapped back through the model's
resize and centre crop onto the image's own pixels; outside the crop it is 0.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from engine.data.dataset import eval_transform, normalize_batch
from engine.errors import UserError
from engine.data.images import BadImage, load_rgb

# The last stage before the head, per family (longest matching prefix wins); ViT, Swin and MaxViT
# are experimental: attention spreads evidence across tokens, so their maps are coarser guides.
_DEFAULT_LAYERS = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "densenet": "features",
    "efficientnet_": "features", "mobilenet_": "features", "mnasnet": "layers", "regnet_": "trunk_output",
    "shufflenet_v2_": "conv5", "googlenet": "inception5b", "inception_v3": "Mixed_7c", "convnext_": "features",
    "vgg": "features", "alexnet": "features", "squeezenet": "features", "swin_": "features.7",
    "maxvit_": "blocks.3",
}
# ViT: the last encoder block's first LayerNorm. The block's output reaches the head through the
# class token alone (the patch tokens' gradient is zero there); its attention input does not.
_VIT_DEPTH = {"vit_b_": 12, "vit_l_": 24, "vit_h_": 32}
EXPERIMENTAL_FAMILIES = ("vit_", "swin_", "maxvit_")


def default_layer(arch: str) -> str:
    """The module whose activation Grad-CAM uses unless told otherwise."""
    for prefix, depth in _VIT_DEPTH.items():
        if arch.startswith(prefix):
            return f"encoder.layers.encoder_layer_{depth - 1}.ln_1"
    matches = [prefix for prefix in _DEFAULT_LAYERS if arch.startswith(prefix)]
    if not matches:
        raise UserError(f"no Grad-CAM layer is known for {arch}; name one with --layer")
    return _DEFAULT_LAYERS[max(matches, key=len)]


def is_experimental(arch: str) -> bool:
    return arch.startswith(EXPERIMENTAL_FAMILIES)


MIN_CELLS = 2  # a map needs at least this many cells each way to point anywhere


@dataclass(frozen=True)
class CamResult:
    cam: np.ndarray  # float32, the image's own height x width, values in [0, 1]
    target: str  # the class (or label) explained
    probabilities: dict[str, float]  # every class (or label), most probable first
    layer: str  # the module whose activation was used
    cells: tuple[int, int] = (0, 0)  # the layer's map, rows x columns
    note: str = ""  # why another layer than the default was used, or why the map is flat


def explain(classifier, image_path: str | Path, layer: str | None = None, target: str | None = None) -> CamResult:
    """Grad-CAM of `target` (default: the predicted class) for one image. `classifier` is an
    engine.deploy.predict.LoadedClassifier. A multi-label model explains one label, which must be
    named: its logit is the target, and the probabilities are each label's own (sigmoid)."""
    task = classifier.task.name
    model, prep, names = classifier.model, classifier.preprocessing, list(classifier.class_names)
    if task == "regression":  # a value has no class score to explain
        raise UserError("Grad-CAM (explain) supports single-label and multi-label models only; this one is regression")
    if task == "multi-label" and target is None:
        raise UserError(f"a multi-label model's Grad-CAM explains one label: name it with --target "
                        f"(choose from {_brief(names)})")
    if layer is not None:
        _module(model, layer, classifier.arch)  # a misspelt layer is refused before any image is read
    if target is not None and target not in names:
        raise UserError(f"unknown {'label' if task == 'multi-label' else 'class'} '{target}' "
                        f"(choose from {_brief(names)})")
    path = Path(image_path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        resized = prep.decode(path)
        width, height = load_rgb(path).size  # the image's own size (EXIF-rotated), which the map must fit
    except BadImage as exc:
        raise UserError(f"cannot use {path}: {exc}") from None
    device = next(model.parameters()).device
    x = normalize_batch(eval_transform(prep.crop)(resized)[None].to(device), prep)
    note = ""
    if layer is None:
        layer, note = spatial_layer(model, classifier.arch, x, prep.crop)
    module = _module(model, layer, classifier.arch)
    logits, activation, gradient, target_index = _activation_and_gradient(model, module, x, names, target, layer)
    grid = _as_grid(activation, classifier.arch, layer)
    cells = (int(grid.shape[2]), int(grid.shape[3]))
    if min(cells) < MIN_CELLS and not note:
        note = _flat_note(layer, cells, prep.crop)
    weights = _as_grid(gradient, classifier.arch, layer).mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * grid).sum(dim=1))[0].float()
    peak = cam.max()
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    image_cam = _onto_image(cam.cpu(), tuple(resized.shape[1:]), prep.crop, (height, width))
    probs = (logits.sigmoid() if task == "multi-label" else logits.softmax(dim=1))[0].tolist()
    ranked = sorted(zip(names, probs), key=lambda pair: -pair[1])
    return CamResult(image_cam, names[target_index], dict(ranked), layer, cells, note)


def spatial_layer(model: nn.Module, arch: str, x: torch.Tensor, crop: int) -> tuple[str, str]:
    """The default layer when its map has at least 2x2 cells for this input, else the deepest stage
    before it that has (one forward pass, no gradient); and a note when it is not the default."""
    default = default_layer(arch)
    candidates = _candidates_deepest_first(model, default)
    cells = _output_cells(model, arch, candidates, x)
    chosen = next((name for name in candidates if min(cells.get(name, (0, 0))) >= MIN_CELLS), None)
    if chosen is None:
        return default, _flat_note(default, cells.get(default, (1, 1)), crop)
    if chosen == default:
        return default, ""
    rows, columns = cells[default]
    return chosen, (f"{default} is {rows}x{columns} at {crop} px, too coarse to point anywhere: "
                    f"{chosen} ({cells[chosen][0]}x{cells[chosen][1]}) is shown")


def _flat_note(layer: str, cells: tuple[int, int], crop: int) -> str:
    return (f"the map is flat: {layer} is {cells[0]}x{cells[1]} at {crop} px, and no earlier stage has 2x2 "
            f"cells; a larger image size gives a map that points somewhere")


def _candidates_deepest_first(model: nn.Module, default: str) -> list[str]:
    """The default layer, its own blocks (last first), then the stages before it (last first)."""
    inner = [f"{default}.{name}" for name, _ in model.get_submodule(default).named_children()]
    parent_name, _, leaf = default.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    siblings = [name for name, _ in parent.named_children()]
    before = siblings[:siblings.index(leaf)] if leaf in siblings else []
    prefix = f"{parent_name}." if parent_name else ""
    return [default, *reversed(inner), *(prefix + name for name in reversed(before))]


def _output_cells(model: nn.Module, arch: str, names: list[str], x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Each named module's output map size (rows, columns) for `x`; modules without a map are left out."""
    cells: dict[str, tuple[int, int]] = {}

    def measure(name):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = next((t for t in output if isinstance(t, torch.Tensor)), None)
            if isinstance(output, torch.Tensor):
                try:
                    grid = _as_grid(output, arch, name)
                except UserError:
                    return
                cells[name] = (int(grid.shape[2]), int(grid.shape[3]))
        return hook

    handles = [model.get_submodule(name).register_forward_hook(measure(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return cells


def _activation_and_gradient(model: nn.Module, module: nn.Module, x: torch.Tensor, names: list[str],
                             target: str | None, layer: str):
    kept: list = []

    def keep(_module, _inputs, output):
        kept.append(output)

    was_training = model.training
    handle = module.register_forward_hook(keep)
    model.eval()
    try:
        with torch.enable_grad():
            x.requires_grad_(True)  # gradients reach every activation without touching a parameter
            logits = model(x).float()
            activation = kept[-1] if kept else None
            if isinstance(activation, (tuple, list)):
                activation = next((t for t in activation if isinstance(t, torch.Tensor)), None)
            if not isinstance(activation, torch.Tensor) or not activation.requires_grad:
                raise UserError(f"layer '{layer}' gives no activation a gradient can reach; choose another --layer")
            index = names.index(target) if target is not None else int(logits[0].argmax())
            # autograd.grad, not backward(): no parameter's .grad is written
            (gradient,) = torch.autograd.grad(logits[0, index], activation)
    finally:
        handle.remove()
        model.train(was_training)
    return logits.detach(), activation.detach(), gradient.detach(), index


def _as_grid(t: torch.Tensor, arch: str, layer: str) -> torch.Tensor:
    """An activation as (1, C, h, w): convolutional maps as they are, Swin's channels-last maps
    permuted, ViT tokens without the class token laid out on the patch grid."""
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2) if arch.startswith("swin_") else t
    if t.dim() == 3:
        tokens = t.shape[1]
        for extra in (1, 0):  # with or without a class token
            side = int(round((tokens - extra) ** 0.5))
            if side > 0 and side * side == tokens - extra:
                return t[:, extra:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
    raise UserError(f"layer '{layer}' gives no spatial map (shape {tuple(t.shape)}); choose a convolutional stage")


def _onto_image(cam: torch.Tensor, resized_hw: tuple[int, int], crop: int, image_hw: tuple[int, int]) -> np.ndarray:
    """The crop-aligned map on the image's own pixels: bilinear (as F.interpolate with
    align_corners=False), separable, so a large photo costs two small matrices and its output."""
    rows = _interpolation(image_hw[0], resized_hw[0], crop, cam.shape[0])
    cols = _interpolation(image_hw[1], resized_hw[1], crop, cam.shape[1])
    return (rows @ cam @ cols.T).clamp_(0, 1).numpy().astype(np.float32)


def _interpolation(size: int, resized: int, crop: int, cells: int) -> torch.Tensor:
    """(size, cells): row i holds the weights of the map's cells for the image's pixel i; zero rows
    for pixels outside the centre crop."""
    offset = int(round((resized - crop) / 2.0))  # torchvision's CenterCrop
    in_crop = (torch.arange(size, dtype=torch.float64) + 0.5) * (resized / size) - offset  # crop px, 0..crop
    position = (in_crop / crop * cells - 0.5).clamp(0, cells - 1)  # map cell coordinates
    low = position.floor().long()
    high = (low + 1).clamp(max=cells - 1)
    frac = position - low
    weights = torch.zeros(size, cells, dtype=torch.float64)
    weights.scatter_add_(1, low[:, None], (1 - frac)[:, None])
    weights.scatter_add_(1, high[:, None], frac[:, None])
    weights[(in_crop < 0) | (in_crop > crop)] = 0
    return weights.float()


def _module(model: nn.Module, layer: str, arch: str) -> nn.Module:
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"{arch} has no module '{layer}' ({hint}the default is {default_layer(arch)}; "
                        f"`transfer-studio layers --model {arch}` lists them)")
    return model.get_submodule(layer)


def _brief(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} classes)" if len(names) > limit else "")


# --- the picture ------------------------------------------------------------------------------------


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A jet-like colour map (blue, cyan, yellow, red) of values in [0, 1]: (H, W, 3) floats in [0, 1]."""
    v = np.clip(cam, 0, 1)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where red, green and blue peak
    return np.clip(1.5 - np.abs(4 * (v - centres)), 0, 1)


def overlay(image_path: str | Path, cam: np.ndarray) -> Image.Image:
    """The image with the map blended over it: hot places strongly, cold ones lightly tinted."""
    path = Path(image_path)
    try:
        image = load_rgb(path)
    except BadImage as exc:
        raise UserError(f"cannot use {path}: {exc}") from None
    if cam.shape != (image.height, image.width):
        raise UserError(f"the map is {cam.shape[1]}x{cam.shape[0]} but {path} is {image.width}x{image.height}")
    base = np.asarray(image, dtype=np.float32) / 255
    alpha = (0.2 + 0.45 * np.clip(cam, 0, 1))[..., None]
    blended = base * (1 - alpha) + heat_colours(cam) * alpha
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")
