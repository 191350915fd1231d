"""Which strategy to train with, from the data and the model, and why in plain sentences.

The strategy table (DESIGN.md §3) applied to the scan's real numbers: under 500 images feature
extraction; 500-5,000 feature extraction then gradual unfreezing; over 5,000 fine-tuning with
discriminative LRs; a domain far from the weights' fine-tuning from the early layers; random
weights never feature extraction (there are no features to extract). Optionally measured too:
one pass of the frozen backbone gives a linear probe and a k-nearest-neighbour accuracy on its
penultimate features, and the same probe on each earlier stage's pooled features; when an earlier
stage separates the classes about as well as the last, the last stages add little for this data,
a sign of a far domain. The figures are shown, and decide only that one flag.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from engine.training.class_weights import IMBALANCE_THRESHOLD
from engine.model.probe import PROBE_STEPS, fit_probe
from engine.config import PlanConfig, default_base_lr
from engine.data.dataset import DatasetScan, Sample, eval_transform, make_loader, stratified_split
from engine.errors import UserError
from engine.model.features import compute_features
from engine.model.architectures import ModelInfo, build_model
from engine.errors import Stopped

SMALL, MODERATE = 500, 5000  # images: the strategy table's bounds
BASE_LR = 1e-3  # the head's LR (the reference recipe's fc LR); stages below ramp down from it
HEAD_ONLY_LR = default_base_lr("feature-extraction")  # a head trained alone takes more
FAR_DOMAIN_LR = 1e-4  # one LR for every layer when the early layers must re-learn
DISCRIMINATIVE_FACTOR = PlanConfig().discriminative_factor
EPOCHS_AFTER_THAW = 3  # gradual: epochs every stage trains together after the last one thaws
# Far domain: an earlier stage's probe within this many accuracy points of the last stage's (or
# above it), while the last stage's probe leaves room: at CLEAR_PROBE or above the frozen features
# already serve (a 92 % probe with a "far" domain read as a contradiction).
FAR_DOMAIN_MARGIN = 0.02
CLEAR_PROBE = 0.85
KNN_K = 5
MAX_TRAIN_IMAGES, MAX_VAL_IMAGES = 2000, 1000  # the measured pass looks at no more than these

Features = tuple[torch.Tensor, torch.Tensor]  # (N, D) float features, (N,) labels
FeatureSets = tuple[Features, Features]  # (train, held out)


@dataclass(frozen=True)
class Advice:
    strategy: str  # one of engine.config.STRATEGIES
    flags: tuple[str, ...]  # the `train` flags that apply it
    plan: PlanConfig  # the plan those flags give
    reasons: tuple[str, ...]
    figures: dict

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "flags": list(self.flags), "reasons": list(self.reasons),
                "figures": self.figures}


def advise(scan: DatasetScan, arch: str, weights: str, *, image_size: int = 224, measure: bool = True,
           batch_size: int = 32, device: torch.device | str = "cpu", features: FeatureSets | None = None,
           should_stop: Callable[[], bool] = lambda: False, info: ModelInfo | None = None) -> Advice:
    """The advice for training `arch` with `weights` on `scan`; measure=False is the table alone
    (no model pass, no images read), which reads only the model's structure: `info` when it is at hand
    (an efficientnet_v2_s costs 0.3-0.5 s to build). `features`: the trunk's (train, held-out) features
    already at hand (the feature cache's): the probe and kNN use them and no image is read, but without
    earlier stages' features a far domain is not judged."""
    measure_images = measure and features is None
    if measure or info is None:
        built = build_model(arch, len(scan.class_names), weights if measure_images else "none", image_size)
        info = built.info
    figures = data_figures(scan)
    reasons = data_reasons(figures, image_size)
    far = None
    if measure:
        if features is None:
            figures["backbone"] = measure_backbone(scan, built.model, info, built.preprocessing, batch_size,
                                                   torch.device(device), should_stop)
        else:
            figures["backbone"] = backbone_figures({"penultimate": features[0]}, {"penultimate": features[1]}, [],
                                                   len(scan.class_names))
        far, why = far_domain(figures["backbone"], weights)
        reasons.append(why)
    strategy, flags, plan, why = choose(figures["images"], weights, far, info)
    norm = norm_statistics_reason(strategy, weights, far, info)
    return Advice(strategy, tuple(flags), plan, tuple(why + ([norm] if norm else []) + reasons), figures)


def norm_statistics_reason(strategy: str, weights: str, far: bool | None, info: ModelInfo) -> str | None:
    """What --adapt-norm auto will do, where it matters: a frozen trunk with BatchNorm layers and
    pretrained weights (engine/training/norm_choice.py)."""
    batch_norm = any(layer.type.startswith(("BatchNorm", "SyncBatchNorm")) for layer in info.layers)
    if strategy != "feature-extraction" or weights == "none" or not batch_norm:
        return None
    first = ("The domain looks far from the weights', so the loaded BatchNorm statistics may normalise these "
             "images badly: " if far else "")
    return (f"{first}--adapt-norm auto (the default) fits the head on the frozen features twice, with the loaded "
            f"BatchNorm statistics and with statistics adapted to these images (AdaBN), and keeps the better "
            f"validation balanced accuracy; the run says which and by how much.")


# --- the table ------------------------------------------------------------------------------------


def data_figures(scan: DatasetScan) -> dict:
    counts = {c["class"]: c["train"] + c["val"] for c in scan.class_counts()}
    smallest = min(counts, key=counts.get)
    return {"images": scan.total, "classes": len(counts), "smallest_class": {"class": smallest,
                                                                               "images": counts[smallest]},
            "imbalance": round(scan.imbalance(), 3), "image_sizes": scan.image_sizes}


def data_reasons(figures: dict, image_size: int) -> list[str]:
    reasons = []
    smallest = figures["smallest_class"]
    if smallest["images"] < 20:
        reasons.append(f"The smallest class, {smallest['class']}, has only {smallest['images']} images: its "
                       f"validation accuracy rests on very few of them.")
    if figures["imbalance"] >= IMBALANCE_THRESHOLD:
        reasons.append(f"The largest class has {figures['imbalance']:.1f}x the images of the smallest "
                       f"(>= {IMBALANCE_THRESHOLD:g}x): --class-weights auto weights the loss by class.")
    sizes = figures["image_sizes"]
    if sizes:
        median = min(sizes["width"]["median"], sizes["height"]["median"])
        if median * 2 <= image_size:
            reasons.append(f"The images are a median {sizes['width']['median']}x{sizes['height']['median']} px, "
                           f"upscaled to {image_size} px: a smaller --image-size trains faster and loses nothing.")
    return reasons


def choose(images: int, weights: str, far: bool | None, info: ModelInfo) -> tuple[str, list[str], PlanConfig, list[str]]:
    """The strategy, its train flags, the plan they give, and the sentences that say why."""
    def lr(value: float) -> str:
        return repr(float(value))

    if weights == "none":
        plan = PlanConfig("fine-tune", BASE_LR)
        why = [f"Random-init weights: the backbone has no features worth keeping, so every layer trains "
               f"(never feature extraction), at one LR of {BASE_LR:g}."]
        if images < MODERATE:
            why.append(f"With {images:,} images from scratch, expect far lower accuracy than with pretrained weights.")
        return "fine-tune", ["--strategy", "fine-tune", "--base-lr", lr(BASE_LR)], plan, why
    if images < SMALL:
        plan = PlanConfig("feature-extraction", HEAD_ONLY_LR)
        why = [f"{images:,} images (< {SMALL}): feature extraction avoids over-fitting; only the new head "
               f"trains, at {HEAD_ONLY_LR:g}, and with --augment none the trunk's features are computed once."]
        if far:
            why.append("The domain looks far from the weights', but with this few images training the trunk "
                       "would over-fit: feature extraction still, then try fine-tuning once there is more data.")
        return ("feature-extraction", ["--strategy", "feature-extraction", "--base-lr", lr(HEAD_ONLY_LR),
                                       "--augment", "none"], plan, why)
    if far:
        plan = PlanConfig("fine-tune", FAR_DOMAIN_LR)
        why = [f"{images:,} images and a domain far from the weights': fine-tuning from the early layers, every "
               f"layer at {FAR_DOMAIN_LR:g}, so the early features can be re-learned."]
        return "fine-tune", ["--strategy", "fine-tune", "--base-lr", lr(FAR_DOMAIN_LR)], plan, why
    factor = DISCRIMINATIVE_FACTOR
    if images <= MODERATE:
        plan = PlanConfig("gradual", BASE_LR, factor, gradual_every=1)
        below_head = [g for g in info.stage_groups if info.head not in g]
        epochs = len(below_head) + EPOCHS_AFTER_THAW + 1
        why = [f"{images:,} images ({SMALL}-{MODERATE:,}): feature extraction first, then gradual unfreezing: "
               f"one more of {len(below_head)} stages every epoch, from the head down, each stage at "
               f"1/{factor:g} of the LR above it (head {BASE_LR:g}); {epochs} epochs so every stage trains "
               f"{EPOCHS_AFTER_THAW + 1} together."]
        return ("gradual", ["--strategy", "gradual", "--base-lr", lr(BASE_LR), "--discriminative-factor",
                            lr(factor), "--gradual-every", "1", "--epochs", str(epochs)], plan, why)
    plan = PlanConfig("discriminative", BASE_LR, factor)
    why = [f"{images:,} images (> {MODERATE:,}): fine-tuning every layer, with discriminative LRs: head "
           f"{BASE_LR:g}, each stage below at 1/{factor:g} of the one above (early layers barely move)."]
    return ("discriminative", ["--strategy", "discriminative", "--base-lr", lr(BASE_LR),
                               "--discriminative-factor", lr(factor)], plan, why)


# --- the measured pass ------------------------------------------------------------------------


def far_domain(backbone: dict, weights: str) -> tuple[bool, str]:
    """Whether the domain looks far from the weights', and one sentence that says why in the figures
    it cites. The figures are compared as shown (whole percents), so no sentence contradicts them."""
    last = backbone["linear_probe"]
    earlier = backbone["stage_probes"][:-1]
    if not earlier:
        return False, f"Linear probe on the frozen features: {last:.0%}; kNN (k={KNN_K}): {backbone['knn']:.0%}."
    best = max(earlier, key=lambda s: s["accuracy"])
    figures = (f"Linear probe on the frozen features: {last:.0%}, kNN (k={KNN_K}, cosine): {backbone['knn']:.0%}; "
               f"best earlier stage: {best['stage']} at {best['accuracy']:.0%}")
    last_points, best_points, margin = _points(last), _points(best["accuracy"]), _points(FAR_DOMAIN_MARGIN)
    if weights == "none":
        return False, f"{figures}."
    if last_points >= _points(CLEAR_PROBE):
        return False, (f"{figures}: the frozen features already separate the classes well, so the domain is "
                       f"close enough to the weights'.")
    if best_points > last_points:
        return True, (f"{figures}: an earlier stage beats the last one ({last:.0%}), so the later stages lose "
                      f"what these images need: the domain looks far from the weights'.")
    if best_points >= last_points - margin:
        return True, (f"{figures}: within {FAR_DOMAIN_MARGIN:.0%} of the last stage's {last:.0%}, so the later "
                      f"stages add little for these images: the domain looks far from the weights'.")
    return False, (f"{figures}: the later stages add {last_points - best_points} points, so the weights' "
                   f"features suit these images.")


def _points(accuracy: float) -> int:
    """An accuracy in whole percentage points, as the sentences show it."""
    return round(accuracy * 100)


def measure_backbone(scan: DatasetScan, model: nn.Module, info: ModelInfo, prep, batch_size: int,
                     device: torch.device, should_stop: Callable[[], bool]) -> dict:
    """One pass of the frozen backbone over (a share of) the images: probes and kNN on held-out images."""
    train, val = (scan.train, scan.val) if scan.val else stratified_split(scan.train, 0.2, 0)
    train, val = _spread(train, MAX_TRAIN_IMAGES), _spread(val, MAX_VAL_IMAGES)
    if not train or not val:
        raise UserError(f"{scan.total} image(s) are too few to hold any out for the probes: advise without measuring")
    model.to(device).eval()
    stages = [group[-1] for group in info.stage_groups if info.head not in group]
    train_sets = _features(model, info, prep, train, stages, batch_size, device, should_stop)
    val_sets = _features(model, info, prep, val, stages, batch_size, device, should_stop)
    return backbone_figures(train_sets, val_sets, stages, len(scan.class_names))


def backbone_figures(train_sets: dict, val_sets: dict, stages: list[str], k: int) -> dict:
    """Probe and kNN on the penultimate features, the probe on each stage's: {name: (features, labels)}."""
    (train_x, train_y), (val_x, val_y) = train_sets["penultimate"], val_sets["penultimate"]
    if not len(train_y) or not len(val_y):
        raise UserError("no decodable image to train or hold out for the probes: advise without measuring")
    return {
        "train_images": len(train_y), "held_out_images": len(val_y),
        "linear_probe": linear_probe(train_x, train_y, val_x, val_y, k),
        "knn": knn_accuracy(train_x, train_y, val_x, val_y, k),
        "stage_probes": [{"stage": s, "accuracy": linear_probe(train_sets[s][0], train_y, val_sets[s][0], val_y, k)}
                         for s in stages if s in train_sets],
    }


def _spread(samples: tuple[Sample, ...], limit: int) -> list[Sample]:
    """At most `limit` samples, evenly spread over the (class-sorted) list: every class keeps its share."""
    if len(samples) <= limit:
        return list(samples)
    return [samples[i * len(samples) // limit] for i in range(limit)]


def _features(model, info, prep, samples, stages, batch_size, device, should_stop) -> dict:
    """{"penultimate": (features, labels), stage: (pooled features, labels)} of one pass."""
    pooled: dict[str, list[torch.Tensor]] = {s: [] for s in stages}

    def keep(stage):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                pooled[stage].append(_global_pool(output).float().cpu())
        return hook

    handles = [model.get_submodule(s).register_forward_hook(keep(s)) for s in stages]
    try:
        loader = make_loader(prep.dataset(samples, eval_transform(prep.crop)), batch_size, False, 0, 0)
        result = compute_features(model, info.head, loader, prep, device, autocast=contextlib.nullcontext,
                                  channels_last=False, should_stop=should_stop)
    finally:
        for handle in handles:
            handle.remove()
    if result is None:
        raise Stopped
    feats, labels = result
    sets = {"penultimate": (feats, labels)}
    sets.update({s: (torch.cat(chunks), labels) for s, chunks in pooled.items() if chunks})
    return sets


def _global_pool(output: torch.Tensor) -> torch.Tensor:
    if output.dim() == 4:  # (N, C, H, W)
        return output.mean(dim=(2, 3))
    if output.dim() == 3:  # (N, tokens, C): a transformer stage
        return output.mean(dim=1)
    return output.flatten(1)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 classes: int, steps: int = PROBE_STEPS) -> float:
    """Held-out accuracy of engine.model.probe's logistic regression."""
    if len(val_y) == 0:
        return float("nan")
    probabilities = fit_probe(train_x, train_y, classes, steps)
    with torch.no_grad():
        return float((probabilities(val_x).argmax(1) == val_y).float().mean())


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 classes: int, k: int = KNN_K) -> float:
    """Held-out accuracy of a k-nearest-neighbour vote by cosine similarity (ties: the closer class)."""
    if len(val_y) == 0 or len(train_y) == 0:
        return float("nan")
    similarity = nn.functional.normalize(val_x, dim=1) @ nn.functional.normalize(train_x, dim=1).T
    top, index = similarity.topk(min(k, len(train_y)), dim=1)
    votes = torch.zeros(len(val_y), classes).scatter_add_(1, train_y[index], 1 + 1e-3 * top)
    return float((votes.argmax(1) == val_y).float().mean())
