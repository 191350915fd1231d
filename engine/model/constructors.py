"""The constructor arguments besides num_classes that torchvision needs to build our model of an
architecture: what `torchvision.models.get_model(arch, num_classes=K, **kwargs)` needs. Apart from
architectures.py, so that checkpoints (which architectures.py reads weight files with) can carry them.
"""

from __future__ import annotations


def builder_kwargs(arch: str, image_size: int = 224) -> dict:
    """What `torchvision.models.get_model(arch, num_classes=K, ...)` needs besides K for our model.
    A timm model's own arguments are in its checkpoint's "source" (engine.model.timm_source)."""
    if arch.startswith("timm:"):
        return {}
    if arch.startswith("vit_"):
        return {"image_size": image_size}  # position embeddings for this many patches
    if arch.startswith("maxvit_"):
        return {"input_size": (image_size, image_size)}  # its window partition is fixed at build time
    if arch in ("googlenet", "inception_v3"):
        # As torchvision builds its pretrained GoogLeNet: auxiliary heads would make the model return a
        # tuple in train mode (and Inception's needs large images); the ImageNet weights were trained
        # on inputs scaled to [-1, 1], which transform_input makes from ImageNet-normalised ones.
        return {"aux_logits": False, "transform_input": True, "init_weights": True}
    return {}


def model_kwargs(arch: str, image_size: int = 224) -> dict:
    """The constructor arguments besides num_classes that rebuild a trained model for loading its weights:
    builder_kwargs without torchvision's own initialisation (the weights replace it, and GoogLeNet's and
    Inception's truncated-normal one is slow). A checkpoint carries them for plain PyTorch."""
    kwargs = builder_kwargs(arch, image_size)
    if "init_weights" in kwargs:
        kwargs["init_weights"] = False
    return kwargs
