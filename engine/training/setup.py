"""Setting a run up: everything the epoch loop needs, built once into one fully formed `Run`.

Scan, device, model and plan, precision, decoded-image cache and loaders, and, when the trunk is
frozen, its features computed once (or loaded from the disk cache). Stop works here too: set_up
raises Stopped between images, so a Stop pressed while thousands of images decode or pass
through the trunk takes effect at once.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.distributed.across_ranks import features_shared_between_ranks
from engine.model.adabn import AdaptedStatistics, adapt_batch_norm, batch_norm_layers, evenly_spaced
from engine.training.batches import FeatureBatches, ImageBatches, SkippedLog
from engine.training.tasks import make_task, task_problem
from engine.config import RunConfig
from engine.data.dataset import (DatasetScan, DecodedCache, Preprocessing, Sample, batches_per_epoch, eval_transform,
                   labels_tensor, make_loader, scan_dataset, train_transform, worker_loader, worker_start_method)
from engine.distributed.process_group import SINGLE, ProcessGroup
from engine.errors import UserError
from engine.errors import Stopped
from engine.model.devices import resolve_precision, select_device
from engine.events import Callbacks, NormChoice, TrainingControl
from engine.model.features import CachedFeatures, compute_feature_views, compute_features, per_file_trunk_features, save_cached_features, trunk_store_key
from engine.training.feature_cache import augmented_views_note, feature_cache_decision
from engine.training.head_fit import HeadRecipe
from engine.training.shared_parts import FRESH, FreshParts
from engine.training.norm_choice import ADAPT, MEASURE, FeatureSets, NormPlan, decision_rows, measure, plan_norm
from engine.training.batches import AugmentedFeatureBatches
from engine.model.architectures import ModelInfo
from engine.plan.plan import Plan, build_plan
from engine.runs.run_folder import RunFolder
from engine.distributed.sharding import rank_loader


@dataclass(frozen=True)
class Run:
    config: RunConfig
    folder: RunFolder
    scan: DatasetScan
    device: torch.device
    model: torch.nn.Module
    info: ModelInfo
    prep: Preprocessing
    notes: tuple[str, ...]
    plan: Plan
    amp_dtype: torch.dtype | None
    channels_last: bool
    batches: ImageBatches | FeatureBatches
    feature_note: str
    skipped: SkippedLog
    group: ProcessGroup = SINGLE  # the processes training this run together (engine.distributed.process_group)
    task: object = None  # engine.training.tasks: the loss, targets, metrics and selection of the data's task
    norm_choice: NormChoice | None = None  # BatchNorm statistics adapted or kept as loaded, and why

    @property
    def precision_name(self) -> str:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def record(self) -> dict:
        """run.json's description of the run (the outcome is added as it happens). "started" is
        the run's first start, and "name" the one the person gave it: a continued run keeps both."""
        from engine import __version__
        from engine.runs.records import started_now

        name = self.folder.recorded_name()
        return {
            "transfer_studio": __version__, "torch": torch.__version__, **({"name": name} if name else {}),
            "started": self.folder.recorded_start() or started_now(), "config": self.config.to_dict(),
            "plan": self.plan.to_dict(), "class_names": list(self.scan.class_names), "task": self.scan.task,
            "dataset": self.scan.summary(), "preprocessing": self.prep.to_dict(), "device": str(self.device),
            "precision": self.precision_name, "feature_cache": self.feature_note,
            **({"norm_statistics": self.norm_choice.to_dict()} if self.norm_choice else {}),
            **({"processes": self.group.world_size} if self.group.is_distributed else {}),
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers(device: torch.device, cache_complete: bool) -> int:
    cpus = os.cpu_count() or 1
    if device.type == "cpu":
        # On CPU the model needs the cores; with every image decoded already, augmenting a small
        # uint8 tensor in the main process is cheaper than feeding worker processes. So is decoding
        # where workers must be spawned: each imports torch anew, for every loader (10-16 s on the
        # 2-core machine, docs/benchmarks.md "Loader worker start").
        if cache_complete or worker_start_method() == "spawn":
            return 0
        return min(2, max(0, cpus - 1))
    return min(8, cpus)


def set_up(config: RunConfig, scan: DatasetScan | None, callbacks: Callbacks, control: TrainingControl,
           fresh: bool, group: ProcessGroup = SINGLE, parts: FreshParts = FRESH) -> Run:
    """A fully formed Run; with fresh=True the run folder's metrics start empty. With several
    processes (`group`) each trains on its share of every batch and rank 0 alone writes. The model
    and the cached features come from `parts` (a search's trials share them: SharedParts)."""
    config.validate()
    if not config.out_dir:
        raise UserError("no output folder given for the run")
    seed_everything(config.train.seed)
    callbacks.on_status("Scanning dataset")
    if scan is None:
        scan = scan_dataset(config.data.root, config.data.val_fraction, config.train.seed, task=config.data.task)
    if config.data.task not in ("auto", scan.task):
        raise UserError(f"the run asks for {config.data.task} data, and {config.data.root} gives {scan.task}")
    if group.is_distributed and scan.task != "single-label":
        raise UserError(f"{scan.task} training runs in one process for now; start it without torchrun or --nproc")
    if len(scan.train) < 2 * group.world_size:  # a rank with no image at all would leave the others waiting
        raise UserError(f"{group.world_size} processes need at least {2 * group.world_size} training images; "
                        f"this dataset has {len(scan.train)}")
    folder = RunFolder(config.out_dir)
    if not fresh:
        _check_same_classes(folder, scan)
    skipped = SkippedLog()
    for s in scan.skipped:
        skipped.add(s.path, s.reason)
    device = group.device(select_device(config.train.device))
    if config.train.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA (SyncBatchNorm has no CPU implementation); leave it out on CPU")
    callbacks.on_status("Building model")
    # channels_last also helps oneDNN's CPU convolutions (~7 % per step for resnet18 at 64 px).
    channels_last = config.train.channels_last
    built = parts.build_model(config.model.arch, len(scan.class_names), config.model.weights, config.data.image_size,
                              min_classes=2 if scan.task == "single-label" else 1, channels_last=channels_last)
    model, info, prep = built.model, built.info, built.preprocessing
    problem = task_problem(scan.task, config, info.head_is_linear)
    if problem:
        raise UserError(problem)
    task = make_task(scan, config.train, device)
    if config.train.sync_bn and group.is_distributed:
        # Before the plan is applied: the conversion builds new norm modules, which would lose a pinned eval mode.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    plan = build_plan(config.plan, info)
    amp_dtype = resolve_precision(config.train.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.train.cudnn_benchmark
    model.to(device)  # in the memory format it was built in
    views = config.train.feature_views if config.data.augment != "none" else 0
    if group.is_distributed:
        views = 0  # augmented views are not sharded between ranks: augmented images pass the trunk each epoch
    use_features, feature_note = feature_cache_decision(info, plan, config.data.augment, config.data.feature_cache,
                                                        views)
    layers = len(batch_norm_layers(model))
    norm = plan_norm(config.train.adapt_norm, batch_norm_layers=layers, cached_features=use_features,
                     cache_note=feature_note, has_val=bool(scan.val), processes=group.world_size,
                     random_weights=config.model.weights == "none",
                     recorded=None if fresh else folder.read_run().norm_choice)
    adapt_first, measured = norm.action == ADAPT, norm.action == MEASURE

    def features_key(adapted: bool, views_now: int) -> str:
        return parts.feature_key(
            scan.train + scan.val, arch=config.model.arch, weights=config.model.weights, seed=config.train.seed,
            head=info.head, prep=prep, precision=str(amp_dtype), device_type=device.type,
            augment=config.data.augment if views_now else "none", views=views_now,
            adapt_norm_batch=config.train.batch_size if adapted else 0)

    # Plain views of a trunk whose statistics are not adapted depend on each file alone: kept per file
    # too, so files moved between classes (engine.curation.dataset_edits) need no new trunk pass.
    per_file = use_features and not views and not adapt_first and not measured
    feature_key = cached = None
    if use_features and not measured:
        feature_key = features_key(adapt_first, views)
        cached = parts.cached_features(feature_key)
        if cached is not None:
            feature_note += " (loaded from the disk cache)"
    # AdaBN's statistics are cached with the features computed after it: found there, no image is
    # decoded or passed through the trunk to adapt them.
    adapted_cache = cached if adapt_first else parts.cached_features(features_key(True, 0)) if measured else None
    known = adapted_cache.statistics if adapted_cache else None
    # Per-file features decode only the files their store lacks, as they are computed: no warming first.
    loaders = _Loaders(config, scan, prep, device, use_features, skipped, callbacks, control, group,
                       warm=(cached is None and not per_file and not measured)
                       or ((adapt_first or measured) and known is None))
    notes = (*built.notes, task.note)  # whether class (or label) weights are on; the target's scale
    choice = statistics = None
    if adapt_first:  # before features are cached and integrity fingerprints taken
        choice, statistics = _adapt_norm(model, loaders, prep, device, channels_last, callbacks, control, norm,
                                         config.train.adapt_norm, layers, known)
    elif not measured:
        choice = norm.choice(config.train.adapt_norm, adapted=False)
    if choice is not None and (layers or config.train.adapt_norm == "on"):
        notes += (choice.line,)
    run = Run(config=config, folder=folder, scan=scan, device=device, model=model, info=info, prep=prep,
              notes=notes, plan=plan, amp_dtype=amp_dtype, channels_last=channels_last,
              batches=loaders.image_batches(channels_last), feature_note=feature_note, skipped=skipped, group=group,
              task=task, norm_choice=choice)
    if group.is_main:
        if fresh:
            folder.start_metrics()
        folder.write_record(run.record())
    if not use_features:
        return run
    if measured:  # the statistics are chosen here, before the integrity fingerprints are taken
        run, (train, val), statistics, measured_note = _measure_norm(run, loaders, callbacks, control, features_key,
                                                                     adapted_cache, plain_train=not views)
        feature_note += f" ({measured_note})" if measured_note else ""
        if views:
            feature_key = features_key(run.norm_choice.adapted, views)
            cached = parts.cached_features(feature_key)
            if cached is not None:
                feature_note += " (views loaded from the disk cache)"
                train = cached.train
            else:
                train, _, views_note = _compute_trunk_features(run, loaders, callbacks, control, feature_key, views,
                                                               val=val, statistics=statistics)
                feature_note += f" ({views_note})" if views_note else ""
    elif cached is not None:
        train, val = cached.train, cached.val
    elif per_file:
        train, val, notes = _gather_per_file_features(run, loaders, callbacks, control, feature_key)
        if notes:
            feature_note += f" ({notes})"
    else:
        train, val, notes = _compute_trunk_features(run, loaders, callbacks, control, feature_key, views,
                                                    statistics=statistics)
        if notes:
            feature_note += f" ({notes})"
    bs, seed = config.train.batch_size, config.train.seed
    if views:
        stored_views, labels = train
        if len(stored_views) != views:  # fewer views fitted the memory budget
            feature_note = feature_note.replace(augmented_views_note(views, config.data.augment),
                                                augmented_views_note(len(stored_views), config.data.augment))
        batches = AugmentedFeatureBatches(stored_views, labels, val, bs, seed, device)
    else:
        batches = FeatureBatches(train, val, bs, seed, device, rank=group.rank, world_size=group.world_size)
    if group.is_main and feature_note != run.feature_note:  # run.json says where the features came from
        folder.update_record(feature_cache=feature_note)
    return replace(run, batches=batches, feature_note=feature_note)


def _adapt_norm(model, loaders: _Loaders, prep: Preprocessing, device: torch.device, channels_last: bool,
                callbacks: Callbacks, control: TrainingControl, norm: NormPlan, setting: str,
                layers: int, known: AdaptedStatistics | None) -> tuple[NormChoice, AdaptedStatistics]:
    statistics = _adapt_statistics(model, loaders, prep, device, channels_last, callbacks, control, known)
    images = statistics.images
    if not layers:
        choice = norm.choice(setting, adapted=False, detail="this model has no BatchNorm layers, nothing to adapt")
    elif not images:
        choice = norm.choice(setting, adapted=False, detail="no training batch of two or more images to adapt on")
    else:
        choice = norm.choice(setting, adapted=True, detail=f"AdaBN: {layers} BatchNorm layers, {images:,} images")
    return choice, statistics


def _adapt_statistics(model, loaders: _Loaders, prep: Preprocessing, device: torch.device, channels_last: bool,
                      callbacks: Callbacks, control: TrainingControl,
                      known: AdaptedStatistics | None = None) -> AdaptedStatistics:
    """AdaBN over the plain training images, or the statistics an earlier pass left in the disk cache
    (`known`) when they fit this model: what the model now holds, and the images averaged over."""
    if known is not None and known.apply(model):
        return known
    callbacks.on_status("Adapting normalization statistics")
    images = adapt_batch_norm(model, loaders.adabn_loader(), prep, device, channels_last,
                              progress=lambda d, t: callbacks.on_status("Adapting normalization statistics", d, t),
                              should_stop=lambda: control.stop_requested)
    if images is None:
        raise Stopped
    return AdaptedStatistics.of(model, images)


def _measure_norm(run: Run, loaders: _Loaders, callbacks: Callbacks, control: TrainingControl, features_key,
                  adapted_cache: CachedFeatures | None, plain_train: bool):
    """(run with its NormChoice and the choice's line in its notes, the chosen statistics' plain
    (train, val) features, the adapted statistics when chosen, a note on where they came from):
    --adapt-norm auto measured (engine.training.norm_choice). The loaded statistics' features come
    from the per-file store, the adapted ones and their statistics from the disk cache
    (`adapted_cache`) or AdaBN and a trunk pass. Decided on a subset of the training images, the
    chosen side's training features are then computed for all of them; `plain_train` False (augmented
    views follow): not at all, and train is None."""
    config = run.config
    notes: list[str] = []
    adapted_statistics: AdaptedStatistics | None = None
    recipe = HeadRecipe(run.model, run.info, run.plan, config.train, run.task, run.device, run.autocast,
                        run.amp_dtype, len(run.scan.class_names))
    # Adapted features in the disk cache cost nothing: the loaded ones of every image are measured against them.
    rows = None if adapted_cache is not None else decision_rows(len(run.scan.train))
    decided: dict[bool, FeatureSets] = {}  # adapted? -> the decision's features

    def loaded_features(rows):
        train, val, note = _gather_per_file_features(run, loaders, callbacks, control, features_key(False, 0), rows)
        notes.append(note)
        decided[False] = train, val
        return train, val

    def adapt() -> bool:
        nonlocal adapted_statistics
        known = adapted_cache.statistics if adapted_cache else None
        adapted_statistics = _adapt_statistics(run.model, loaders, run.prep, run.device, run.channels_last,
                                               callbacks, control, known)
        return bool(adapted_statistics.images)

    def adapted_features(rows):
        key = features_key(True, 0)
        if adapted_cache is not None:
            notes.append("adapted features loaded from the disk cache")
            if adapted_cache.statistics is None:  # a file from before statistics were kept: next time, no AdaBN pass
                _save_features(run, key, adapted_cache.train, adapted_cache.val, callbacks, adapted_statistics)
            decided[True] = adapted_cache.train, adapted_cache.val
        elif rows is None:
            train, val, note = _compute_trunk_features(run, loaders, callbacks, control, key, 0, label="adapted ",
                                                       statistics=adapted_statistics)
            notes.append(note)
            decided[True] = train, val
        else:  # the decision's share of the training images, and every validation image: not cached
            decided[True] = _decision_features(run, loaders, callbacks, control, rows)
        return decided[True]

    choice, features = measure(recipe, loaded_features, adapt, adapted_features, rows,
                               should_stop=lambda: control.stop_requested)
    if features is None:  # decided on a subset: the chosen statistics' features of every training image
        val = decided[choice.adapted][1]
        if not plain_train:
            features = None, val
        elif choice.adapted:
            train, note = _adapted_training_features(run, loaders, callbacks, control, features_key(True, 0), rows,
                                                     decided[True][0], val, adapted_statistics)
            features = train, val
            notes.append(note)
        else:
            features = loaded_features(None)
    callbacks.on_status(choice.line)
    if run.group.is_main:
        run.folder.update_record(norm_statistics=choice.to_dict())
    run = replace(run, norm_choice=choice, notes=run.notes + (choice.line,))
    return run, features, adapted_statistics if choice.adapted else None, "; ".join(dict.fromkeys(n for n in notes if n))


def _adapted_training_features(run: Run, loaders: _Loaders, callbacks: Callbacks, control: TrainingControl, key: str,
                               rows: list[int], decided, val, statistics: AdaptedStatistics):
    """(train, note): the adapted features of every training image, the trunk run only on those the
    decision did not pass (`decided`: the features of `rows`), saved under `key`. An image that did not
    decode leaves rows that cannot be placed: then every image passes the trunk again."""
    chosen = set(rows)
    rest = [i for i in range(len(run.scan.train)) if i not in chosen]
    computed = compute_features(run.model, run.info.head, loaders.plain_train_loader(rest),
                                progress=lambda d, t: callbacks.on_status("Computing adapted training features", d, t),
                                on_failures=lambda failures: run.skipped.add_failures(failures, run.scan.train),
                                **_trunk_pass_settings(run, control))
    if computed is None:
        raise Stopped
    if len(decided[0]) != len(rows) or len(computed[0]) != len(rest):
        train, _, note = _compute_trunk_features(run, loaders, callbacks, control, key, 0, val=val,
                                                 label="adapted ", statistics=statistics)
        return train, note
    features = torch.empty(len(run.scan.train), decided[0].shape[1], dtype=decided[0].dtype)
    labels = torch.empty(len(run.scan.train), dtype=decided[1].dtype)
    features[rows], labels[rows] = decided
    features[rest], labels[rest] = computed
    return (features, labels), _save_features(run, key, (features, labels), val, callbacks, statistics) or ""


def _decision_features(run: Run, loaders: _Loaders, callbacks: Callbacks, control: TrainingControl,
                       rows: list[int]) -> FeatureSets:
    """The trunk's features of the training images `rows` and of every validation image, as the model's
    statistics now are; undecodable images are left out here and reported by the pass over all of them."""
    common = _trunk_pass_settings(run, control)
    train = compute_features(run.model, run.info.head, loaders.plain_train_loader(rows),
                             progress=lambda d, t: callbacks.on_status("Measuring adapted statistics", d, t), **common)
    if train is None:
        raise Stopped
    val = compute_features(run.model, run.info.head, loaders.all_val_loader(), **common)
    if val is None:
        raise Stopped
    return train, val


def _check_same_classes(folder: RunFolder, scan: DatasetScan) -> None:
    then = folder.read_run().class_names
    if then is not None and list(then) != list(scan.class_names):
        added = sorted(set(scan.class_names) - set(then))
        removed = sorted(set(then) - set(scan.class_names))
        change = "; ".join(filter(None, [f"added {', '.join(added)}" if added else "",
                                         f"removed {', '.join(removed)}" if removed else ""])) or "reordered"
        raise UserError(f"the dataset's classes changed since {folder.path} started ({change}); a run cannot "
                        f"continue with other classes: start a new run")


class _Loaders:
    """The decoded-image caches and DataLoaders of one run."""

    def __init__(self, config: RunConfig, scan: DatasetScan, prep: Preprocessing, device: torch.device,
                 use_features: bool, skipped: SkippedLog, callbacks: Callbacks, control: TrainingControl,
                 group: ProcessGroup, warm: bool) -> None:
        self.scan, self.prep, self.device, self.skipped = scan, prep, device, skipped
        budget = config.data.decoded_cache_mb * 2**20
        total = max(1, scan.total)
        train_cache = DecodedCache(budget * len(scan.train) // total) if budget else None
        val_cache = DecodedCache(budget * len(scan.val) // total) if budget else None
        for name, cache, samples in (("training", train_cache, scan.train), ("validation", val_cache, scan.val)):
            if warm and cache is not None and samples:
                cache.warm(samples, prep.resize,
                           lambda d, t, n=name: callbacks.on_status(f"Decoding {n} images", d, t),
                           should_stop=lambda: control.stop_requested, interpolation=prep.interpolation)
                if control.stop_requested:
                    raise Stopped
                skipped.add_failures(cache.failures.items(), samples)
        complete = budget > 0 and all(c is None or c.complete_for == len(s) for c, s in
                                      ((train_cache, scan.train), (val_cache, scan.val)))
        workers = config.data.num_workers if config.data.num_workers is not None else default_workers(device, complete)
        pin = device.type == "cuda"
        # With cached features the training set's augmentation makes the augmented views.
        augment = config.data.augment
        self._decoded = {s.path: (cache, i) for cache, samples in ((train_cache, scan.train), (val_cache, scan.val))
                         if cache is not None for i, s in enumerate(samples)}
        self.train_set = prep.dataset(scan.train, train_transform(augment, prep.crop), train_cache)
        self.plain_train_set = prep.dataset(scan.train, eval_transform(prep.crop), train_cache)
        val_set = self.val_set = prep.dataset(scan.val, eval_transform(prep.crop), val_cache)
        bs, seed = config.train.batch_size, config.train.seed
        if group.is_distributed:  # this rank's share of each global batch and of the validation images
            self.train_loader = rank_loader(self.train_set, bs, True, workers, seed, pin, group.rank, group.world_size)
            self.val_loader = (rank_loader(val_set, bs, False, workers, seed, pin, group.rank, group.world_size)
                               if len(val_set) else None)
        else:
            self.train_loader = make_loader(self.train_set, bs, True, workers, seed, pin)
            self.val_loader = make_loader(val_set, bs, False, workers, seed, pin) if len(val_set) else None
        self.global_steps = batches_per_epoch(len(scan.train), bs) if group.is_distributed else None
        self.workers, self.batch_size, self.seed, self.pin = workers, bs, seed, pin
        self.last_epoch = config.train.epochs

    def image_batches(self, channels_last: bool) -> ImageBatches:
        return ImageBatches(self.train_loader, self.val_loader, self.scan.train, self.scan.val, self.prep,
                            self.device, channels_last, self.skipped, last_epoch=self.last_epoch,
                            global_steps=self.global_steps)

    def feature_loader(self, seed: int | None = None):
        """The training images in file order, for computing their trunk features once (`seed`
        seeds the loader workers' augmentation, one per augmented view)."""
        return make_loader(self.train_set, self.batch_size, False, self.workers,
                           self.seed if seed is None else seed, self.pin)

    def plain_train_loader(self, rows: list[int] | None = None):
        """The training images in file order without augmentation (`rows`: only those)."""
        if rows is None:
            return make_loader(self.plain_train_set, self.batch_size, False, self.workers, self.seed, self.pin)
        return worker_loader(self.plain_train_set, batch_size=self.batch_size, sampler=rows, drop_last=False,
                             num_workers=self.workers, pin_memory=self.pin,
                             generator=torch.Generator().manual_seed(self.seed))

    def adabn_loader(self):
        """What AdaBN averages over: the plain training images, at most adabn.MAX_IMAGES of them spread
        evenly over the file order."""
        return self.plain_train_loader(evenly_spaced(len(self.plain_train_set)))

    def decoded(self, samples: list[Sample]) -> DecodedCache | None:
        """The images of `samples` this run has decoded already, indexed as `samples` (None: none)."""
        found = [(j, *self._decoded[s.path]) for j, s in enumerate(samples) if s.path in self._decoded]
        images = [(j, cache.images[i]) for j, cache, i in found if i in cache.images]
        if not images:
            return None
        view = DecodedCache(sum(image.numel() * image.element_size() for _, image in images))  # shares the tensors
        for j, image in images:
            view.put(j, image)
        return view

    def all_val_loader(self):
        """Every validation image in file order, on every rank (val_loader is this rank's share):
        features computed for the whole set, of which FeatureBatches then takes this rank's share."""
        return make_loader(self.val_set, self.batch_size, False, self.workers, self.seed, self.pin)


def _trunk_pass_settings(run: Run, control: TrainingControl) -> dict:
    """compute_features' keywords for this run: how its trunk runs, and when to stop."""
    return dict(prep=run.prep, device=run.device, autocast=run.autocast, channels_last=run.channels_last,
                should_stop=lambda: control.stop_requested)


def _compute_trunk_features(run: Run, loaders: _Loaders, callbacks: Callbacks, control: TrainingControl,
                            key: str, views: int, val=None, label: str = "",
                            statistics: AdaptedStatistics | None = None):
    """(train, val, note): the trunk's features, saved under `key` (with the adapted `statistics` they
    were computed with); `val` given: those, not computed again."""
    common = _trunk_pass_settings(run, control)
    callbacks.on_status("Computing trunk features (once)")
    reduced = None

    def on_failures(failures):
        run.skipped.add_failures(failures, run.scan.train)

    if views:
        computed = compute_feature_views(
            views, run.config.train.seed, loaders.feature_loader,
            progress=lambda v, d, t: callbacks.on_status(f"Computing training features, view {v}/{views}", d, t),
            model=run.model, head=run.info.head, on_failures=on_failures, **common)
        if computed is None:
            raise Stopped
        stacked, labels, reduced = computed  # reduced: a note when fewer views fitted in memory
        train = stacked, labels
    else:
        # The plain view (augmentation 'none' trains on it too; with views on, the measured choice needs it).
        train = compute_features(run.model, run.info.head, loaders.plain_train_loader(),
                                 progress=lambda d, t: callbacks.on_status(f"Computing {label}training features", d, t),
                                 on_failures=on_failures, **common)
    if train is None:
        raise Stopped
    if val is None and run.scan.val:
        val = compute_features(run.model, run.info.head, loaders.all_val_loader(),
                               progress=lambda d, t: callbacks.on_status(f"Computing {label}validation features", d, t),
                               on_failures=lambda f: run.skipped.add_failures(f, run.scan.val), **common)
        if val is None:
            raise Stopped
    unsaved = _save_features(run, key, train, val, callbacks, statistics)  # a note when the cache cannot take them
    return train, val, "; ".join(note for note in (reduced, unsaved) if note)


def _save_features(run: Run, key: str, train, val, callbacks: Callbacks,
                   statistics: AdaptedStatistics | None = None) -> str | None:
    """The whole dataset's features under its key, saved by rank 0 alone (every rank holds the same)."""
    if not run.group.is_main:
        return None
    callbacks.on_status("Saving trunk features to the disk cache")
    return save_cached_features(key, train, val, statistics)


def _gather_per_file_features(run: Run, loaders: _Loaders, callbacks: Callbacks, control: TrainingControl,
                              key: str, rows: list[int] | None = None):
    """(train, val, note): plain trunk features from the per-file store, the trunk run only on the
    files it lacks (all of them the first time); labels from the scan, so a file moved to another
    class keeps its features under its new label. Also saved under the dataset's key, as the
    other paths do. `rows`: of those training images only (a measured choice's share: not saved
    under the dataset's key, and no note)."""
    config = run.config
    trunk_key = trunk_store_key(arch=config.model.arch, weights=config.model.weights, seed=config.train.seed,
                                head=run.info.head, prep=run.prep, amp_dtype=run.amp_dtype,
                                device_type=run.device.type)
    callbacks.on_status("Computing trunk features (once)")
    computed = 0

    def count(n: int) -> None:
        nonlocal computed
        computed += n

    def gather(samples, name: str):
        gathered = per_file_trunk_features(
            run.model, run.info.head, run.prep, run.device, samples, trunk_key, batch_size=loaders.batch_size,
            seed=loaders.seed, workers=loaders.workers, pin=loaders.pin, autocast=run.autocast,
            channels_last=run.channels_last,
            progress=lambda d, t: callbacks.on_status(f"Computing {name} features", d, t),
            on_failures=run.skipped.add_failures, on_computed=count, should_stop=lambda: control.stop_requested,
            share=lambda compute: features_shared_between_ranks(run.group, compute), trunk_pass=compute_features,
            decoded=loaders.decoded)
        if gathered is None:
            raise Stopped
        features, positions, unsaved = gathered
        return (features, labels_tensor([samples[i].label for i in positions])), unsaved

    train_samples = run.scan.train if rows is None else [run.scan.train[i] for i in rows]
    train, train_unsaved = gather(train_samples, "training")
    val, val_unsaved = gather(run.scan.val, "validation") if run.scan.val else (None, None)
    if rows is not None:
        return train, val, train_unsaved or val_unsaved or ""
    total = len(run.scan.train) + len(run.scan.val)
    reused = f"per-file features: trunk run on {computed} of {total} image(s)"
    if run.group.is_distributed:  # each rank ran the trunk on its share: the note counts them all
        reused = (f"per-file features: trunk run on {sum(run.group.gather_objects(computed))} of {total} image(s), "
                  f"{computed} of them by this process")
    unsaved = _save_features(run, key, train, val, callbacks)
    return train, val, "; ".join(n for n in (reused, train_unsaved or val_unsaved, unsaved) if n)
