"""Whether a run's head can train on cached trunk features, and the note that says why (or why not)."""

from __future__ import annotations

from engine.model.architectures import ModelInfo
from engine.plan.plan import Plan


def feature_cache_decision(info: ModelInfo, plan: Plan, augment: str, enabled: bool,
                           views: int = 0) -> tuple[bool, str]:
    """Whether the head can train on cached features, and why (shown to the person). With
    augmentation on, `views` augmented views per image are cached (0: none, images every epoch)."""
    if not enabled:
        return False, "feature cache off (setting)"
    if not info.head_is_linear:
        return False, f"feature cache off: {info.arch}'s head is a convolution before pooling"
    if plan.unfreeze_at:
        return False, "feature cache off: gradual unfreezing changes the trunk"
    head_prefix = info.head + "."
    for param_name, module, _ in info.parameter_modules:
        if not param_name.startswith(head_prefix) and not plan.effective(module).frozen:
            return False, "feature cache off: layers before the head train"
    for layer in info.layers:
        if layer.is_norm and not layer.name.startswith(head_prefix):
            eff = plan.effective(layer.name)
            if eff.train_norm:
                return False, "feature cache off: frozen norm layers update their statistics"
    if augment != "none" and not views:
        return False, (f"feature cache off: augmentation '{augment}' changes every epoch's inputs and feature "
                       f"views is 0 (choose 'none', or 1 or more views, to cache)")
    if augment != "none":
        return True, augmented_views_note(views, augment)
    return True, "feature cache on: trunk computed once, head trained on cached features"


def augmented_views_note(views: int, augment: str) -> str:
    return (f"trunk features of {views} augmented view{'s' if views != 1 else ''} per image, cached: the trunk is "
            f"frozen and augmentation '{augment}' is on, so each epoch draws one view per image "
            f"(validation uses the plain view)")
