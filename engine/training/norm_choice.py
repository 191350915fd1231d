"""--adapt-norm: whether a run adapts its BatchNorm statistics to the training images (AdaBN) or keeps
them as loaded, and, for "auto", the measured choice.

The plain tutorial loop's "frozen" BatchNorm re-estimates its statistics under model.train() (a bug
that helps on a shifted domain); Transfer Studio keeps them exactly as loaded unless asked. "auto"
makes that a measured choice where it is cheap and honest to measure: a frozen trunk whose features
are cached, BatchNorm layers, validation images, one process. The trunk's features are computed with
the loaded statistics and again with statistics adapted to the training images (of at most
DECISION_IMAGES training images, and every validation image); the head is fitted on each as the run
would fit it (engine/training/head_fit.py); the better validation score wins (balanced accuracy; mAP
for multi-label data, R² for regression), and a tie keeps the loaded statistics (frozen means frozen
unless adapting helps). The chosen statistics' features of the other training images follow.
Elsewhere "auto" adapts nothing and says why. A continued run keeps the choice it recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from engine.events import NormChoice
from engine.model.adabn import batch_norm_statistics, evenly_spaced, restore_statistics
from engine.training.head_fit import Features, HeadRecipe, HeadScore, fit_head

ADAPT, KEEP, MEASURE = "adapt", "keep", "measure"
SCORE_NAMES = {"single-label": "balanced accuracy", "multi-label": "mAP", "regression": "R²"}  # what is compared
FeatureSets = tuple[Features, Features]  # (train, val)
# Each head of the measured choice is fitted on at most this many training images (and scored on every
# validation image): measuring then costs a bounded number of trunk passes beyond what the run needs, not
# a second pass over the whole training set (digits at 96 px: 7.9 s of measuring over 722 images).
DECISION_IMAGES = 256


@dataclass(frozen=True)
class NormPlan:
    """What set-up does about the statistics: adapt them first, keep them, or measure both."""

    action: str  # ADAPT | KEEP | MEASURE
    why: str  # for ADAPT and KEEP: the reason NormChoice shows
    recorded: NormChoice | None = None  # a continued run's own choice, kept as it was

    def choice(self, setting: str, adapted: bool, detail: str = "") -> NormChoice:
        """The NormChoice of an action that was not measured (`detail`: what adapting did)."""
        if self.recorded is not None:
            return self.recorded
        return NormChoice(setting, adapted, "; ".join(part for part in (self.why, detail) if part))


def plan_norm(setting: str, *, batch_norm_layers: int, cached_features: bool, cache_note: str, has_val: bool,
              processes: int, random_weights: bool, recorded: NormChoice | None = None) -> NormPlan:
    """What to do for `setting` (auto | on | off) with this run's model and data."""
    if recorded is not None:  # the features and the checkpoint must keep the statistics they started with
        return NormPlan(ADAPT if recorded.adapted else KEEP, recorded.why, recorded)
    if setting == "on":
        return NormPlan(ADAPT, "setting on")
    if setting == "off":
        return NormPlan(KEEP, "setting off")
    unmeasured = "; --adapt-norm on adapts them"
    if not batch_norm_layers:
        return NormPlan(KEEP, "auto: this model has no BatchNorm layers, nothing to adapt")
    if not cached_features:  # the note says why: a trunk that trains, augmentation without views, ...
        return NormPlan(KEEP, f"auto: not measured without cached features, {cache_note}{unmeasured}")
    if not has_val:
        return NormPlan(KEEP, f"auto: not measured, no validation images to compare on{unmeasured}")
    if processes > 1:
        return NormPlan(KEEP, f"auto: not measured with several processes{unmeasured}")
    if random_weights:  # feature extraction from random weights is a smoke test: no passes spent on it
        return NormPlan(KEEP, f"auto: not measured for random weights{unmeasured}")
    return NormPlan(MEASURE, "")


def decide(pinned: HeadScore | None, adapted: HeadScore | None, seconds: float,
           score_name: str = "balanced accuracy") -> NormChoice:
    """Adapted only when its head scores strictly better. A head that diverged (None) loses to any
    score, a negative R² included, and is shown as 0."""
    adapted_wins = adapted is not None and (pinned is None or adapted.score > pinned.score)
    return NormChoice("auto", adapted_wins, "auto: measured", pinned.score if pinned else 0.0,
                      adapted.score if adapted else 0.0, seconds, score_name)


def decision_rows(train_images: int) -> list[int] | None:
    """The training images each head is fitted on to decide: at most DECISION_IMAGES, spread evenly
    over the file order (it reaches every class); None for all of them."""
    return None if train_images <= DECISION_IMAGES else evenly_spaced(train_images, DECISION_IMAGES)


def measure(recipe: HeadRecipe, loaded_features: Callable[[list[int] | None], FeatureSets], adapt: Callable[[], bool],
            adapted_features: Callable[[list[int] | None], FeatureSets], rows: list[int] | None,
            should_stop: Callable[[], bool] = lambda: False) -> tuple[NormChoice, FeatureSets | None]:
    """Fit the head on the features with the loaded statistics, adapt them (`adapt`), fit it on the
    adapted ones, and keep the better: the model ends with the chosen statistics. Both heads are fitted
    on the training images `rows` (None: all) and scored on every validation image; `*_features(rows)`
    give those. Returns the choice and, when `rows` is None, the chosen statistics' features (else the
    caller computes them for every image: only the chosen side's). `adapt` says whether it adapted
    anything (AdaBN needs a batch of two). Plain views only: with augmented views the chosen statistics
    compute them afterwards."""
    started = time.perf_counter()
    loaded = loaded_features(rows)
    saved = batch_norm_statistics(recipe.model)
    if not adapt():  # AdaBN kept the loaded statistics itself
        choice = NormChoice("auto", False, "auto: no training batch of two or more images to adapt on")
        return choice, loaded if rows is None else None
    adapted = adapted_features(rows)
    pinned_score = fit_head(recipe, *loaded, should_stop=should_stop)
    adapted_score = fit_head(recipe, *adapted, should_stop=should_stop)
    choice = decide(pinned_score, adapted_score, time.perf_counter() - started, SCORE_NAMES[recipe.task.name])
    if not choice.adapted:
        restore_statistics(saved)  # the loaded statistics, bit for bit: what the freeze proof then holds
    if rows is not None:
        return choice, None
    return choice, adapted if choice.adapted else loaded
