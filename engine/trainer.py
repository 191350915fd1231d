"""`fit(config, callbacks, control) -> FitResult`: the whole training run.

No widget, no print: progress goes to `callbacks`, steering comes from `control`, files go to
the run folder (run.json, metrics.jsonl, checkpoint.pt for the best epoch, resume.pt for the
latest). Everything the person set is in the immutable RunConfig.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import BackgroundSaver, make_checkpoint, safe_torch_load, snapshot
from .config import RunConfig, save_json_atomic
from .data import (DatasetScan, DecodedCache, ImageDataset, SkippedFile, drops_last_batch, epoch_order,
                   eval_transform, make_loader, normalize_batch, scan_dataset, train_transform)
from .errors import TrainingDiverged, UserError
from .events import BatchEvent, Callbacks, EpochEvent, RunStarted, TrainingControl
from .features import (compute_features, feature_cache_decision, feature_cache_key, load_cached_features,
                       save_cached_features)
from .models import build_model
from .plan import GroupSpec, Plan, apply_plan, build_plan, group_specs, param_groups
from .schedule import lr_factor


@dataclass(frozen=True)
class FitResult:
    run_dir: str
    checkpoint: str | None
    best_epoch: int | None
    best_val_accuracy: float | None
    epochs_run: int
    seconds: float
    images_per_second: float
    stopped: str  # "completed" | "early-stopping" | "user"
    skipped: tuple[SkippedFile, ...] = field(default_factory=tuple)

    def summary(self) -> dict:
        return {
            "run_dir": self.run_dir, "checkpoint": self.checkpoint, "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy, "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
            "stopped": self.stopped,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}' (use auto, cpu or cuda[:N])") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("CUDA was asked for but no CUDA device is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"no {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"unsupported device '{spec}' (use auto, cpu or cuda[:N])")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if spec == "off" or (spec == "auto" and device.type != "cuda"):
        return None
    if spec == "fp16" or (spec == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers(device: torch.device, cache_complete: bool) -> int:
    cpus = os.cpu_count() or 1
    if device.type == "cpu":
        # On CPU the model needs the cores; with every image decoded already, augmenting a small
        # uint8 tensor in the main process is cheaper than feeding worker processes.
        return 0 if cache_complete else min(2, max(0, cpus - 1))
    return min(8, cpus)


class _Stopped(Exception):
    """The person asked to stop; unwinds the epoch."""


RESUME_FILE = "resume.pt"


def fit(config: RunConfig, callbacks: Callbacks | None = None, control: TrainingControl | None = None,
        scan: DatasetScan | None = None, resume: bool = False) -> FitResult:
    """Train as `config` says. With resume=True, continue the run in config.out_dir from its last
    completed epoch (model, optimizer, scaler, schedule position, RNG and best-so-far restored)."""
    return _Training(config, callbacks or Callbacks(), control or TrainingControl(), scan, resume).run()


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run folder was started with (its run.json)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no run.json)")
    try:
        raw = json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    return RunConfig.from_dict(raw)


class _Training:
    def __init__(self, config: RunConfig, callbacks: Callbacks, control: TrainingControl, scan, resume: bool):
        config.validate()
        if not config.out_dir:
            raise UserError("no output folder given for the run")
        self.config = config
        self.cb = callbacks
        self.control = control
        self.scan = scan
        self.run_dir = Path(config.out_dir)
        self.skipped: dict[str, str] = {}
        self.resume_state = None
        if resume:
            self.resume_state = safe_torch_load(self.run_dir / RESUME_FILE)
            if self.resume_state.get("epoch", 0) >= config.train.epochs:
                raise UserError(f"{self.run_dir} already ran {self.resume_state['epoch']} epoch(s); "
                                f"ask for more than that to continue")

    # --- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.config
        seed_everything(cfg.train.seed)
        self.cb.on_status("Scanning dataset")
        if self.scan is None:
            self.scan = scan_dataset(cfg.data.root, cfg.data.val_fraction, cfg.train.seed)
        for s in self.scan.skipped:
            self.skipped[s.path] = s.reason
        self.device = select_device(cfg.train.device)
        self.cb.on_status("Building model")
        built = build_model(cfg.model.arch, len(self.scan.class_names), cfg.model.weights, cfg.data.image_size)
        self.model, self.info, self.prep, self.notes = built.model, built.info, built.preprocessing, built.notes
        self.plan = build_plan(cfg.plan, self.info)
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device)
        # channels_last also helps oneDNN's CPU convolutions (~7 % per step for resnet18 at 64 px).
        self.channels_last = cfg.train.channels_last
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.use_features, self.feature_note = feature_cache_decision(
            self.info, self.plan, cfg.data.augment, cfg.data.feature_cache)
        self.cached_features = None
        if self.use_features:
            self.feature_key = feature_cache_key(
                self.scan.train + self.scan.val, arch=cfg.model.arch, weights=cfg.model.weights,
                seed=cfg.train.seed, head=self.info.head, prep=self.prep, precision=str(self.amp_dtype),
                device_type=self.device.type)
            self.cached_features = load_cached_features(self.feature_key)
            if self.cached_features is not None:
                self.feature_note += " (loaded from the disk cache)"
        self._make_loaders(warm=self.cached_features is None)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_state is None:
            (self.run_dir / "metrics.jsonl").write_text("")
        save_json_atomic(self.run_dir / "run.json", self._run_record())

    def _make_loaders(self, warm: bool) -> None:
        cfg, scan, prep = self.config, self.scan, self.prep
        budget = cfg.data.decoded_cache_mb * 2**20
        total = max(1, scan.total)
        self.train_cache = DecodedCache(budget * len(scan.train) // total) if budget else None
        self.val_cache = DecodedCache(budget * len(scan.val) // total) if budget else None
        for name, cache, samples in (("training", self.train_cache, scan.train), ("validation", self.val_cache, scan.val)):
            if warm and cache is not None and samples:
                cache.warm(samples, prep.resize, lambda d, t, n=name: self.cb.on_status(f"Decoding {n} images", d, t))
                self._note_failures([(i, r) for i, r in cache.failures.items()], samples)
        complete = all(c is None or c.complete_for == len(s) for c, s in
                       ((self.train_cache, scan.train), (self.val_cache, scan.val))) and budget > 0
        workers = cfg.data.num_workers if cfg.data.num_workers is not None else default_workers(self.device, complete)
        pin = self.device.type == "cuda"
        augment = "none" if self.use_features else cfg.data.augment
        self.train_set = ImageDataset(scan.train, prep.resize, train_transform(augment, prep.crop), self.train_cache)
        self.val_set = ImageDataset(scan.val, prep.resize, eval_transform(prep.crop), self.val_cache)
        bs, seed = cfg.train.batch_size, cfg.train.seed
        self.train_loader = make_loader(self.train_set, bs, True, workers, seed, pin)
        # Trunk features are computed once, in file order, without augmentation.
        self.feature_loader = make_loader(self.train_set, bs, False, workers, seed, pin) if self.use_features else None
        self.val_loader = make_loader(self.val_set, bs, False, workers, seed, pin) if len(self.val_set) else None
        self.workers = workers

    def _note_failures(self, failures, samples) -> None:
        for index, reason in failures:
            self.skipped.setdefault(samples[index].path, reason)

    def _run_record(self) -> dict:
        return {
            "transfer_studio": __version__,
            "torch": torch.__version__,
            "config": self.config.to_dict(),
            "plan": self.plan.to_dict(),
            "class_names": list(self.scan.class_names),
            "dataset": self.scan.summary(),
            "preprocessing": self.prep.to_dict(),
            "device": str(self.device),
            "precision": self.precision_name,
            "feature_cache": self.feature_note,
        }

    @property
    def precision_name(self) -> str:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- optimizer ----------------------------------------------------------------------------

    def _make_optimizer(self, specs: list[GroupSpec]) -> torch.optim.Optimizer:
        groups = param_groups(self.model, specs)
        name = self.config.train.optimizer
        if name == "sgd":
            return torch.optim.SGD(groups, lr=self.plan.base_lr, momentum=0.9)
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(groups, lr=self.plan.base_lr)

    def _sync_optimizer(self, plan: Plan) -> list[str]:
        """Add groups for parameters that became trainable (gradual unfreezing); return the modules."""
        present = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        params = dict(self.model.named_parameters())
        added = []
        for spec in group_specs(self.info, plan, self.config.train.weight_decay):
            new = [n for n in spec.params if id(params[n]) not in present]
            if new:
                label = f"{spec.label} (from epoch {self.epoch})"
                self.optimizer.add_param_group({"params": [params[n] for n in new], "lr": spec.lr,
                                                "weight_decay": spec.weight_decay, "group_label": label})
                added.append(label)
        for g in self.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        return added

    def _set_lrs(self, step: int) -> None:
        factor = lr_factor(step, self.total_steps, self.config.train.schedule, self.warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor

    def _current_lrs(self) -> dict[str, float]:
        return {g["group_label"]: g["lr"] for g in self.optimizer.param_groups}

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> FitResult:
        self.saver = BackgroundSaver()
        try:
            return self._run()
        finally:
            self.saver.close()  # every checkpoint is on disk before fit returns or raises

    def _run(self) -> FitResult:
        started = time.perf_counter()
        self.prepare()
        cfg = self.config
        trainable_module = self.model
        if self.use_features:
            self._cache_features()
            if self.control.stop_requested:
                return self._result(started, 0, "user")
            trainable_module = self.model.get_submodule(self.info.head)
        elif cfg.train.compile:
            # Compiled lazily by the first batch; the checkpoint still comes from the plain module.
            trainable_module = torch.compile(self.model)
            self.cb.on_status("Compiling the model (the first steps are slow)")
        apply_plan(self.model, self.plan)
        specs = group_specs(self.info, self.plan, cfg.train.weight_decay)
        if not specs and not self.plan.unfreeze_at:
            raise UserError("nothing to train: every layer is frozen")
        self.optimizer = self._make_optimizer(specs)
        for g in self.optimizer.param_groups:
            g["initial_lr"] = g["lr"]
        self.steps_per_epoch = max(1, self._train_batches())
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = int(round(cfg.train.warmup_epochs * self.steps_per_epoch))
        self.global_step = 0
        self.best: tuple[float, float] | None = None  # (accuracy, -loss)
        self.best_epoch = None
        self.best_accuracy = None
        self.checkpoint_path = None
        self.images_seen, self.train_seconds = 0, 0.0
        first_epoch = 1
        self.plan_in_force = self.plan
        if self.resume_state is not None:
            first_epoch = self._restore(self.resume_state) + 1
        self.cb.on_run_started(RunStarted(
            run_dir=str(self.run_dir), device=str(self.device), device_name=device_name(self.device),
            precision=self.precision_name,
            class_names=self.scan.class_names, train_images=len(self.scan.train), val_images=len(self.scan.val),
            trainable_params=self._trainable_params(), total_params=self.info.total_params,
            feature_cache=self.feature_note, notes=tuple(self.notes)))
        epochs_run, stopped, since_best = first_epoch - 1, "completed", 0
        try:
            for self.epoch in range(first_epoch, cfg.train.epochs + 1):
                newly = self._enter_epoch(self.epoch)
                event = self._one_epoch(trainable_module, tuple(newly))
                self._save_resume_state()
                epochs_run = self.epoch
                since_best = 0 if event.is_best else since_best + 1
                if cfg.train.early_stopping_patience and since_best >= cfg.train.early_stopping_patience:
                    stopped = "early-stopping"
                    break
        except _Stopped:
            stopped = "user"
        return self._result(started, epochs_run, stopped)

    def _enter_epoch(self, epoch: int) -> list[str]:
        """Apply the plan in force this epoch; newly unfrozen modules join the optimizer."""
        plan_now = self.plan.at_epoch(epoch - 1)
        if plan_now is self.plan and epoch > 1:
            return []
        apply_plan(self.model, plan_now)
        self.plan_in_force = plan_now
        return self._sync_optimizer(plan_now) if epoch > 1 else []

    def _save_resume_state(self) -> None:
        """Everything needed to continue after this epoch exactly as if never interrupted."""
        self.saver.save(snapshot({
            "format_version": 1,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": {k: v.contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "best": list(self.best) if self.best else None,
            "best_epoch": self.best_epoch,
            "best_accuracy": self.best_accuracy,
        }), self.run_dir / RESUME_FILE)

    def _restore(self, state: dict) -> int:
        done = int(state["epoch"])
        for epoch in range(1, done + 1):  # rebuild the optimizer's groups as they were
            self.epoch = epoch
            self._enter_epoch(epoch)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.global_step = int(state["global_step"])
        self.best = tuple(state["best"]) if state["best"] else None
        self.best_epoch, self.best_accuracy = state["best_epoch"], state["best_accuracy"]
        if (self.run_dir / "checkpoint.pt").exists():
            self.checkpoint_path = self.run_dir / "checkpoint.pt"
        return done

    def _train_batches(self) -> int:
        if self.use_features:
            n, bs = len(self.train_features[1]), self.config.train.batch_size
            return n // bs if drops_last_batch(n, bs) else math.ceil(n / bs)
        return len(self.train_loader)

    def _trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _result(self, started: float, epochs_run: int, stopped: str) -> FitResult:
        seconds = time.perf_counter() - started
        return FitResult(
            run_dir=str(self.run_dir),
            checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None,
            best_epoch=getattr(self, "best_epoch", None),
            best_val_accuracy=getattr(self, "best_accuracy", None),
            epochs_run=epochs_run,
            seconds=seconds,
            images_per_second=getattr(self, "images_seen", 0) / max(1e-9, getattr(self, "train_seconds", 0.0)),
            stopped=stopped,
            skipped=tuple(SkippedFile(p, r) for p, r in sorted(self.skipped.items())),
        )

    def _cache_features(self) -> None:
        if self.cached_features is not None:
            self.train_features, self.val_features = self.cached_features
            return
        common = dict(prep=self.prep, device=self.device, autocast=self.autocast, channels_last=self.channels_last,
                      should_stop=lambda: self.control.stop_requested)
        self.cb.on_status("Computing trunk features (once)")
        train = compute_features(self.model, self.info.head, self.feature_loader,
                                 progress=lambda d, t: self.cb.on_status("Computing training features", d, t),
                                 on_failures=lambda f: self._note_failures(f, self.scan.train), **common)
        val = None
        if self.val_loader is not None and train is not None:
            val = compute_features(self.model, self.info.head, self.val_loader,
                                   progress=lambda d, t: self.cb.on_status("Computing validation features", d, t),
                                   on_failures=lambda f: self._note_failures(f, self.scan.val), **common)
        self.train_features, self.val_features = train, val
        if train is not None and (val is not None or self.val_loader is None):
            self.cb.on_status("Saving trunk features to the disk cache")
            save_cached_features(self.feature_key, train, val)

    # --- batches ------------------------------------------------------------------------------

    def _train_batches_iter(self):
        """(inputs on device, labels on device, batch size) for one epoch, in either mode."""
        if self.use_features:
            feats, labels = self.train_features
            order = epoch_order(len(labels), self.config.train.seed, self.epoch)
            bs = self.config.train.batch_size
            end = len(order) - 1 if drops_last_batch(len(order), bs) else len(order)
            for start in range(0, end, bs):
                idx = order[start:min(start + bs, end)]
                yield feats[idx].to(self.device), labels[idx].to(self.device)
            return
        self.train_loader.sampler.set_epoch(self.epoch)
        for batch in self.train_loader:
            if batch.failures:
                self._note_failures(batch.failures, self.scan.train)
            if not len(batch.labels):
                continue
            yield self._to_device(batch.images), batch.labels.to(self.device, non_blocking=True)

    def _val_batches_iter(self):
        if self.use_features:
            if self.val_features is None:
                return
            feats, labels = self.val_features
            bs = self.config.train.batch_size * 4
            for start in range(0, len(labels), bs):
                yield feats[start:start + bs].to(self.device), labels[start:start + bs].to(self.device)
            return
        if self.val_loader is None:
            return
        for batch in self.val_loader:
            if batch.failures:
                self._note_failures(batch.failures, self.scan.val)
            if len(batch.labels):
                yield self._to_device(batch.images), batch.labels.to(self.device, non_blocking=True)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(images.to(self.device, non_blocking=True), self.prep)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # --- one epoch ----------------------------------------------------------------------------

    def _one_epoch(self, module: nn.Module, newly_unfrozen: tuple[str, ...]) -> EpochEvent:
        cfg = self.config
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        module.train()
        epoch_start = time.perf_counter()
        data_seconds = 0.0
        loss_sum, seen = 0.0, 0
        correct = torch.zeros((), dtype=torch.long, device=self.device)  # read once, at the epoch's end
        pending_losses: list[float] = []
        last_event = 0.0
        min_gap = 1.0 / max(1e-6, cfg.train.max_batch_events_per_second)
        batches = self._train_batches_iter()
        step = 0
        while True:
            wait_start = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            data_seconds += time.perf_counter() - wait_start
            self.control.wait_while_paused()
            if self.control.stop_requested:
                raise _Stopped
            step += 1
            self._set_lrs(self.global_step)
            with self.autocast():
                logits = module(x)
                loss = criterion(logits.float(), y)
            loss_value = loss.item()  # the step's one wait for the device
            if not math.isfinite(loss_value):
                self._diverged(loss_value, f"epoch {self.epoch}, step {step}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            n = len(y)
            loss_sum += loss_value * n
            correct += (logits.argmax(1) == y).sum()
            seen += n
            pending_losses.append(loss_value)
            now = time.perf_counter()
            if now - last_event >= min_gap or step == self.steps_per_epoch:
                elapsed = now - epoch_start
                rate = seen / max(1e-9, elapsed)
                remaining = (self.total_steps - self.global_step) * (elapsed / step)
                self.cb.on_batch_end(BatchEvent(
                    epoch=self.epoch, epochs=cfg.train.epochs, step=step, steps=self.steps_per_epoch,
                    global_step=self.global_step, total_steps=self.total_steps,
                    loss=float(np.mean(pending_losses)), lrs=self._current_lrs(),
                    images_per_second=rate, eta_seconds=remaining))
                pending_losses.clear()
                last_event = now
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_seconds = time.perf_counter() - epoch_start
        self.images_seen += seen
        self.train_seconds += train_seconds
        val = self._evaluate(module)
        seconds = time.perf_counter() - epoch_start
        event = self._finish_epoch(
            train_loss=loss_sum / max(1, seen), train_accuracy=int(correct) / max(1, seen), val=val,
            seconds=seconds, images_per_second=seen / max(1e-9, train_seconds),
            data_seconds=data_seconds, compute_seconds=train_seconds - data_seconds,
            newly_unfrozen=newly_unfrozen)
        self.cb.on_epoch_end(event)
        return event

    def _diverged(self, value: float, where: str) -> None:
        kept = f"; the last good checkpoint is kept at {self.checkpoint_path}" if self.checkpoint_path else ""
        raise TrainingDiverged(f"the loss became {value} at {where} (try a lower LR){kept}")

    @torch.no_grad()
    def _evaluate(self, module: nn.Module) -> dict | None:
        k = len(self.scan.class_names)
        confusion = torch.zeros(k, k, dtype=torch.long)
        loss_sum, seen = 0.0, 0
        module.eval()
        try:
            for x, y in self._val_batches_iter():
                if self.control.stop_requested:
                    raise _Stopped
                with self.autocast():
                    logits = module(x)
                loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
                pred = logits.argmax(1)
                confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
                seen += len(y)
        finally:
            module.train()
        if seen == 0:
            return None
        if not math.isfinite(loss_sum):
            self._diverged(loss_sum, f"epoch {self.epoch}, validation")
        per_class = {}
        for i, name in enumerate(self.scan.class_names):
            total = int(confusion[i].sum())
            per_class[name] = int(confusion[i, i]) / total if total else None
        return {"loss": loss_sum / seen, "accuracy": int(confusion.diag().sum()) / seen,
                "per_class": per_class, "confusion": confusion.tolist()}

    def _finish_epoch(self, *, train_loss, train_accuracy, val, seconds, images_per_second, data_seconds,
                      compute_seconds, newly_unfrozen) -> EpochEvent:
        score_acc = val["accuracy"] if val else train_accuracy
        score_loss = val["loss"] if val else train_loss
        score = (score_acc, -score_loss)
        is_best = self.best is None or score > self.best
        lrs = self._current_lrs()
        k = len(self.scan.class_names)
        event = EpochEvent(
            epoch=self.epoch, epochs=self.config.train.epochs, train_loss=train_loss, train_accuracy=train_accuracy,
            val_loss=val["loss"] if val else None, val_accuracy=val["accuracy"] if val else None,
            per_class_accuracy=val["per_class"] if val else {}, confusion_matrix=val["confusion"] if val else [[0] * k] * k,
            seconds=seconds, images_per_second=images_per_second, data_seconds=data_seconds,
            compute_seconds=compute_seconds, lr=lrs, trainable_params=self._trainable_params(), is_best=is_best,
            newly_unfrozen=newly_unfrozen, skipped_files=len(self.skipped), feature_cache=self.use_features)
        metrics = {
            "epoch": self.epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
            "val_loss": event.val_loss, "val_accuracy": event.val_accuracy, "seconds": round(seconds, 4),
            "images_per_second": round(images_per_second, 2), "data_seconds": round(data_seconds, 4),
            "compute_seconds": round(compute_seconds, 4), "lr": lrs, "trainable_params": event.trainable_params,
            "per_class_accuracy": event.per_class_accuracy, "confusion_matrix": event.confusion_matrix,
            "newly_unfrozen": list(newly_unfrozen), "is_best": is_best,
        }
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if is_best:
            self.best, self.best_epoch = score, self.epoch
            self.best_accuracy = event.val_accuracy
            self.checkpoint_path = self.run_dir / "checkpoint.pt"
            self.saver.save(make_checkpoint(
                self.model, arch=self.info.arch, class_names=self.scan.class_names,
                preprocessing=self.prep.to_dict(), plan=self.plan_in_force.to_dict(), metrics=metrics,
                epoch=self.epoch, config=self.config.to_dict()), self.checkpoint_path)
        return event
