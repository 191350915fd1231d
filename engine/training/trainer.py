"""`fit(config, callbacks, control) -> FitResult`: the whole training run.

set_up (engine/training/setup.py) builds one fully formed Run; the EpochLoop here trains it, one
epoch at a time, from a batch source (images or cached features); listeners
(engine/training/listeners.py) record and watch: metrics log, run record, best checkpoint, resume state,
early stopping, freeze integrity and per-layer telemetry. No widget, no print: progress goes to
`callbacks`, steering comes from `control`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from engine.training.batches import FeatureBatches, single_image_batch_problem
from engine.model.checkpoint import BackgroundSaver
from engine.distributed.across_ranks import ProcessesRecord, combine_validation, epoch_totals, integrity_across_ranks
from engine.config import RunConfig
from engine.data.dataset import DatasetScan
from engine.distributed.process_group import SINGLE, ProcessGroup
from engine.runs.embeddings import head_inputs
from engine.errors import NoUsableImages, TrainingDiverged, UserError
from engine.training.validation_records import TaskValidationRecord, ValidationOutputs, ValidationRecords
from engine.events import BatchEvent, Callbacks, EpochEvent, FitResult, RunStarted, SkippedFile, TrainingControl
from engine.training.integrity import FreezeIntegrity
from engine.training.calibration_record import CalibrationRecord
from engine.training.listeners import BestCheckpoint, CallbackRelay, EarlyStopping, MetricsLog, ResumeState, RunOutcome, record_failure
from engine.listener import Listener, load_listener_states
from engine.plan.optimization import Optimization, ScheduleSegment
from engine.plan.plan import apply_plan
from engine.runs.run_folder import RunFolder
from engine.training.setup import Run, set_up
from engine.model.devices import device_name, one_thread
from engine.errors import Stopped
from engine.distributed.sharding import global_batch_size, per_rank_batch_size
from engine.training.telemetry import Telemetry
from engine.training.tensorboard_log import TensorBoardLog
from engine.training.search_trial import BestRecordsAtEnd, SearchTrial
from engine.training.shared_parts import FRESH, FreshParts


def fit(config: RunConfig, callbacks: Callbacks | None = None, control: TrainingControl | None = None,
        scan: DatasetScan | None = None, resume: bool = False, group: ProcessGroup = SINGLE,
        listeners: Sequence[Listener] = (), trial: SearchTrial | None = None) -> FitResult:
    """Train as `config` says. With resume=True, continue the run in config.out_dir from its last
    completed epoch (model, optimizer, scaler, schedule position, RNG, best-so-far, and each
    listener's own state: the integrity fingerprints, early stopping's count). With several
    processes (`group`, its process group started) every rank calls fit; rank 0 alone writes the
    run folder. `listeners` are the caller's own (a search's pruner), called after the run's
    records and early stopping, before the resume state. `trial`: the run is a search's trial
    (engine.training.search_trial: the same training and proofs, fewer files, shared parts)."""
    callbacks = callbacks or Callbacks()
    control = control or TrainingControl()
    started = time.perf_counter()
    if not config.out_dir:
        raise UserError("no output folder given for the run")
    problem = single_image_batch_problem(config) or processes_problem(config, group)  # before the folder is touched
    if problem:
        raise UserError(problem)
    folder = RunFolder(config.out_dir)
    with folder.locked() if group.is_main else contextlib.nullcontext():
        resume_state = _start_state(folder, config, resume, group)
        saver = BackgroundSaver()
        try:
            try:
                run = _set_up_on_every_rank(config, scan, callbacks, control, resume_state is None, group,
                                            trial.parts if trial else FRESH)
                loop = EpochLoop(run, callbacks, control, saver, resume_state, listeners, trial)
            except Stopped:
                return _stopped_in_setup(config, resume_state is not None, started, group)
            except Exception as exc:
                if resume_state is None and group.is_main:  # a continued run keeps its status when it cannot start again
                    record_failure(folder, exc)
                raise
            result = loop.train(started)
        finally:
            saver.close()  # every checkpoint is on disk before fit returns or raises
    group.barrier()  # the other ranks end once rank 0's files are complete
    return result


def _set_up_on_every_rank(config: RunConfig, scan: DatasetScan | None, callbacks: Callbacks,
                          control: TrainingControl, fresh: bool, group: ProcessGroup, parts: FreshParts) -> Run:
    """set_up, then Stopped on every rank when any rank stopped during it. Each rank reads the
    control file on its own while it decodes and adapts: one that saw Stop would wait in the last
    barrier while another, set up already, waited in DDP's first collectives."""
    try:
        run = set_up(config, scan, callbacks, control, fresh=fresh, group=group, parts=parts)
    except Stopped:
        run = None
    if any(group.gather_objects(run is None)):
        raise Stopped
    return run


def _start_state(folder: RunFolder, config: RunConfig, resume: bool, group: ProcessGroup) -> dict | None:
    """The resume state (None for a new run), after rank 0 checked the folder; every rank ends
    with the same one-line error when any of them cannot start."""
    error, state = None, None
    try:
        state = _resume_state(config) if resume else None
        if group.is_main and state is None:
            folder.refuse_if_used()
        elif group.is_main:
            folder.keep_metrics_through(int(state["epoch"]))
    except UserError as exc:
        error = exc
    group.raise_if_any_failed(error)
    return state


def processes_problem(config: RunConfig, group: ProcessGroup) -> str | None:
    """Why `config` cannot train on the processes of `group`."""
    if not group.is_distributed:
        return None
    if config.train.compile:
        return "--compile is not available with several processes; leave it out"
    share = per_rank_batch_size(config.train.batch_size, group.world_size)
    problem = single_image_batch_problem(replace(config, train=replace(config.train, batch_size=share)))
    return f"{problem} (each of the {group.world_size} processes takes 1 image of a batch)" if problem else None


def _resume_state(config: RunConfig) -> dict:
    state = RunFolder(config.out_dir).read_resume_state()
    if state["epoch"] >= config.train.epochs:
        raise UserError(f"{config.out_dir} already ran {state['epoch']} epoch(s); "
                        f"ask for more than that to continue")
    return state


def _stopped_in_setup(config: RunConfig, resumed: bool, started: float, group: ProcessGroup) -> FitResult:
    folder = RunFolder(config.out_dir)
    checkpoint = str(folder.checkpoint_path) if resumed and folder.has_checkpoint() else None
    if not resumed and folder.exists() and group.is_main:
        folder.update_record(status="stopped")
    return FitResult(run_dir=config.out_dir, checkpoint=checkpoint, best_epoch=None, best_val_accuracy=None,
                     epochs_run=0, seconds=time.perf_counter() - started, images_per_second=0.0, stopped="user")


class EpochLoop:
    def __init__(self, run: Run, callbacks: Callbacks, control: TrainingControl, saver: BackgroundSaver,
                 resume_state: dict | None, extra_listeners: Sequence[Listener] = (),
                 trial: SearchTrial | None = None) -> None:
        cfg = run.config
        self.run, self.control, self.group, self.trial = run, control, run.group, trial
        self.trained = run.batches.module_to_train(run.model, run.info.head)  # under DDP with several processes
        self.module = self.trained
        self.uses_features = isinstance(run.batches, FeatureBatches)
        if cfg.train.compile and not self.uses_features:
            # Compiled lazily by the first batch; checkpoints still come from the plain module.
            self.module = torch.compile(run.model)
            callbacks.on_status("Compiling the model (the first steps are slow)")
        self.steps_per_epoch = run.batches.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)
        self.task = run.task
        self.criterion = self.task.loss
        self.single_label = self.task.name == "single-label"
        self.global_step = 0
        self.epoch = 0
        self.best_score: tuple[float, float] | None = None  # (accuracy, -loss)
        self.best_epoch: int | None = None
        self.best_accuracy: float | None = None
        self.best_metrics: dict | None = None  # the task's validation metrics at the best epoch (not single-label)
        self.validation: ValidationOutputs | None = None  # the last validation pass, per image
        self.images_seen, self.train_seconds = 0, 0.0
        self.plan_in_force = run.plan.at_epoch(0)
        run.model.train()
        apply_plan(run.model, self.plan_in_force)  # requires_grad is set before the optimizer sees it
        # After the plan: DDP registers only what trains, so frozen parameters stay outside its reducer.
        self.module = self.group.wrap(self.module, run.device)
        self.rank_integrity: list[dict] = []  # each rank's integrity after the last epoch
        self.optimization = Optimization(run.model, run.info, self.plan_in_force, cfg.train,
                                         self._segment(resume_state))
        self.integrity = FreezeIntegrity(run.model, (trial.parts if trial else FRESH).frozen_reference(run.model))
        # Rank 0 alone samples telemetry: it alone shows it, and a sample on another rank would hold every rank up.
        self.telemetry = (Telemetry(run.model, self.scaler, self.steps_per_epoch)
                          if cfg.train.telemetry and self.group.is_main else None)
        self.calibration = CalibrationRecord(run.folder, run.scan.class_names, run.scan.root, lambda: self.validation)
        self.checkpoint = BestCheckpoint(
            run.folder, saver, run.model, arch=run.info.arch, class_names=run.scan.class_names,
            preprocessing=run.prep.to_dict(), config=cfg.to_dict(), extras=self._checkpoint_extras)
        self.best_at_end: BestRecordsAtEnd | None = None  # a search trial's: its best epoch's records, at the end
        self.listeners = self._listeners(callbacks, saver, extra_listeners)
        self.first_epoch = 1 if resume_state is None else self._restore(resume_state) + 1

    def _checkpoint_extras(self) -> dict:
        """The best epoch's calibration (single-label) or task fields (thresholds, the target's scale)."""
        extras = self.task.checkpoint_fields(self.validation)
        if self.calibration.current:
            extras["calibration"] = self.calibration.current
        return extras

    def _listeners(self, callbacks: Callbacks, saver: BackgroundSaver,
                   extra: Sequence[Listener] = ()) -> list[Listener]:
        """Every listener of the run, in the order each hook calls them. The order is the point:
        - the records (metrics line, run.json, the caller's display, TensorBoard) come before integrity,
          which may end the run: the epoch that broke it is on disk, and shown;
        - integrity comes before the checkpoint and the validation records, so a broken epoch saves neither;
        - the checkpoint before its validation records: weights that diverged end the run before
          records of them replace those of the last good checkpoint;
        - the caller's own listeners (`extra`, a search's pruner) after the records, as early stopping;
        - early stopping before the resume state, and the resume state last: it saves every listener's
          state as this epoch left it, and once resume.pt names the epoch, all its files are written
          (a kill before that repeats the epoch).
        A search trial holds the best-epoch records (calibration, checkpoint, validation records) and
        run.json's integrity verdict until the run ends, and keeps no resume state.
        Telemetry acts around the optimizer step, where no other listener does: first or last is the same.
        Rank 0 alone writes the run folder; every rank checks its own copy's integrity and counts the
        patience, so all ranks end at the same epoch."""
        run, patience = self.run, self.run.config.train.early_stopping_patience
        main = self.group.is_main
        ordered = [
            self.telemetry,
            MetricsLog(run.folder) if main else None,
            RunOutcome(run.folder, each_epoch=self.trial is None) if main else None,
            ProcessesRecord(run.folder, self.group.world_size, lambda: self.rank_integrity)
            if main and self.group.is_distributed else None,
            CallbackRelay(callbacks),
            TensorBoardLog(run.folder, run.config.to_dict(), run.scan.class_names, run.scan.root, lambda: self.validation,
                           run.task)
            if main and run.config.train.tensorboard else None,
            self.integrity,
            *self._best_epoch_records(),
            EarlyStopping(patience) if patience else None,
            *extra,
            ResumeState(run.folder, saver, self._loop_state, lambda: self.listeners)
            if main and self.trial is None else None,
        ]
        return [listener for listener in ordered if listener is not None]

    def _best_epoch_records(self) -> list[Listener]:
        """What rank 0 writes at each new best epoch, in order: the calibration before the checkpoint,
        which carries it; the validation records after it. A search trial's wait for the run's end
        (BestRecordsAtEnd, kept as self.best_at_end for the loop to release)."""
        run = self.run
        if not self.group.is_main:
            return []
        records = [
            # Temperature scaling and val_predictions.csv are softmax's; other tasks keep val_outputs.pt.
            self.calibration if self.single_label else None,
            self.checkpoint,
            (ValidationRecords if self.single_label else TaskValidationRecord)(
                run.folder, run.scan.class_names, run.scan.root, lambda: self.validation),
        ]
        records = [record for record in records if record is not None]
        if self.trial is None:
            return records
        self.best_at_end = BestRecordsAtEnd(records, run.model, lambda: self.integrity.promised_names,
                                            lambda: self.validation, self._show_validation,
                                            self.trial.records_skipped_when)
        return [self.best_at_end]

    def _show_validation(self, outputs: ValidationOutputs | None) -> None:
        self.validation = outputs

    # --- schedule, resume ---------------------------------------------------------------------

    def _segment(self, resume_state: dict | None) -> ScheduleSegment:
        cfg = self.run.config.train
        if resume_state is None or resume_state.get("planned_epochs", cfg.epochs) == cfg.epochs:
            return ScheduleSegment.planned(cfg, self.steps_per_epoch)  # the schedule preview's own formula
        # More epochs than first planned: the added epochs get a schedule of their own.
        done = int(resume_state["global_step"])
        return ScheduleSegment(first_step=done, steps=self.total_steps - done, warmup_steps=0)

    def _loop_state(self) -> dict:
        """The loop's part of resume.pt; the listeners keep theirs (ResumeState)."""
        return {
            "epoch": self.epoch, "global_step": self.global_step,
            "planned_epochs": self.run.config.train.epochs,
            "schedule_segment": [self.optimization.segment.first_step, self.optimization.segment.steps],
            "model": self.run.model.state_dict(),  # snapshot() copies it, each tensor in its own layout
            "optimizer": self.optimization.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "best": list(self.best_score) if self.best_score else None,
            "best_epoch": self.best_epoch, "best_accuracy": self.best_accuracy, "best_metrics": self.best_metrics,
        }

    def _restore(self, state: dict) -> int:
        done = int(state["epoch"])
        for epoch in range(2, done + 1):  # rebuild the optimizer's groups as they were
            self._enter_epoch(epoch, notify=False)
        run = self.run
        run.model.load_state_dict(state["model"])
        self.optimization.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.global_step = int(state["global_step"])
        self.best_score = tuple(state["best"]) if state["best"] else None
        self.best_epoch, self.best_accuracy = state["best_epoch"], state["best_accuracy"]
        self.best_metrics = state.get("best_metrics")
        load_listener_states(self.listeners, state["listeners"])
        return done

    def _enter_epoch(self, epoch: int, notify: bool = True) -> tuple[str, ...]:
        """Apply the plan in force this epoch; newly unfrozen modules join the optimizer."""
        self.epoch = epoch
        plan_now = self.run.plan.at_epoch(epoch - 1)
        added: list[str] = []
        if plan_now is not self.plan_in_force:
            apply_plan(self.run.model, plan_now)
            self.plan_in_force = plan_now
            added = self.optimization.add_unfrozen(plan_now, epoch)
            if self.group.is_distributed:  # what trains changed: DDP's reducer must be built anew, on every rank
                self.module = self.trained  # the old wrapper (and its gradient hooks) goes first
                self.module = self.group.wrap(self.trained, self.run.device)
        if notify:
            for listener in self.listeners:
                listener.on_epoch_start(epoch, plan_now)
        return tuple(added)

    # --- the run ------------------------------------------------------------------------------

    def train(self, started: float) -> FitResult:
        # A head on cached features trains on CPU in one thread, as its measured twin (head_fit) does.
        with one_thread(self.run.device) if self.uses_features else contextlib.nullcontext():
            return self._train(started)

    def _train(self, started: float) -> FitResult:
        try:  # a listener failing at the start (run.json unwritable) still leaves the run "failed", not "running"
            epochs_run, stopped = self._epochs()
            if self.best_at_end is not None:  # a search trial: its best epoch's records, now
                self.best_at_end.write(stopped)
        except Exception as exc:
            for listener in self.listeners:
                listener.on_fit_failed(exc)
            raise
        result = self._result(started, epochs_run, stopped)
        for listener in self.listeners:
            listener.on_fit_end(result)
        return result

    def _epochs(self) -> tuple[int, str]:
        """The run's epochs, from the first to train: (epochs run in all, why they ended)."""
        run, cfg = self.run, self.run.config
        epochs_run = self.first_epoch - 1
        try:
            for listener in self.listeners:
                listener.on_fit_start(RunStarted(
                    run_dir=str(run.folder.path), device=str(run.device), device_name=device_name(run.device),
                    precision=run.precision_name, class_names=run.scan.class_names,
                    train_images=len(run.scan.train), val_images=len(run.scan.val),
                    trainable_params=self._trainable_params(), total_params=run.info.total_params,
                    feature_cache=run.feature_note, notes=run.notes, norm_choice=run.norm_choice))
            for epoch in range(self.first_epoch, cfg.train.epochs + 1):
                newly = self._enter_epoch(epoch)
                event = self._one_epoch(newly)
                for listener in self.listeners:
                    listener.on_epoch_end(event)
                epochs_run = epoch
                reasons = [listener.stop_reason for listener in self.listeners if listener.stop_reason]
                if reasons:
                    return epochs_run, reasons[0]
        except Stopped:
            return epochs_run, "user"
        return epochs_run, "completed"

    def _one_epoch(self, newly_unfrozen: tuple[str, ...]) -> EpochEvent:
        cfg, run = self.run.config, self.run
        self.module.train()
        epoch_start = time.perf_counter()
        data_seconds = 0.0
        seen, step = 0, 0
        correct = torch.zeros((), dtype=torch.long, device=run.device)  # read once, at the epoch's end
        losses = _LossesReadLate(self._check_loss)
        last_event = 0.0
        min_gap = 1.0 / max(1e-6, cfg.train.max_batch_events_per_second)
        batches = run.batches.train_batches(self.epoch)
        last_batch = None
        # A rank left without any batch (every file of its share failed) shadows the others' all-reduces.
        with self.group.uneven_steps(self.module):
            while True:
                wait_start = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                data_seconds += time.perf_counter() - wait_start
                if self.control.check_step(step + 1, self.steps_per_epoch):
                    raise Stopped
                step += 1
                last_batch = (x, y)
                loss, logits = self._step(x, y, self._rank_weight(len(y), step))
                n = len(y)
                losses.add(loss, n, step)
                correct += self.task.train_hits(logits, y)
                seen += n
                now = time.perf_counter()
                last_step = step == self.steps_per_epoch
                if last_step or step == 1:  # the epoch's first and last events show their own step
                    losses.read()
                if (now - last_event >= min_gap or last_step) and losses.unreported:
                    elapsed = now - epoch_start
                    event = BatchEvent(
                        epoch=self.epoch, epochs=cfg.train.epochs, step=step, steps=self.steps_per_epoch,
                        global_step=self.global_step, total_steps=self.total_steps,
                        loss=float(np.mean(losses.take_unreported())), lrs=self.optimization.current_lrs(),
                        images_per_second=seen * self.group.world_size / max(1e-9, elapsed),  # all ranks
                        eta_seconds=(self.total_steps - self.global_step) * (elapsed / step),
                        layers=self.telemetry.take_latest() if self.telemetry else {})
                    for listener in self.listeners:
                        listener.on_batch_end(event)
                    last_event = now
            # A rank whose share ran out early (an empty or a held-back one-image part of the last global
            # batch) takes the epoch's remaining steps with a zero loss: every rank's optimizer steps alike,
            # so its state, the step count and the LR stay those of rank 0.
            while self.group.is_distributed and step < self.steps_per_epoch and last_batch is not None:
                if self.control.check_step(step + 1, self.steps_per_epoch):  # as the other ranks do at this step
                    raise Stopped
                step += 1
                self._step(*last_batch, weight=0.0)
        losses.read()
        loss_sum = losses.weighted_sum
        if self.group.is_distributed:  # the epoch's figures over every rank's share
            loss_sum, correct, seen = epoch_totals(self.group, loss_sum, correct, seen, run.device)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        if seen == 0:  # every image deleted or spoiled after the scan: nothing trained, say so
            kept = f"; the last good checkpoint is kept at {self.checkpoint.path}" if self.checkpoint.path else ""
            raise NoUsableImages(f"epoch {self.epoch} had no usable training image: "
                                 f"{run.skipped.summary()}{kept}")
        train_seconds = time.perf_counter() - epoch_start
        self.images_seen += seen
        self.train_seconds += train_seconds
        val = self._evaluate()
        return self._epoch_event(
            train_loss=loss_sum / max(1, seen), train_accuracy=self.task.train_score(int(correct), seen), val=val,
            seconds=time.perf_counter() - epoch_start, images_per_second=seen / max(1e-9, train_seconds),
            data_seconds=data_seconds, compute_seconds=train_seconds - data_seconds, newly_unfrozen=newly_unfrozen)

    def _step(self, x: torch.Tensor, y: torch.Tensor, weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; `weight` scales the loss that is backpropagated (not the one returned)."""
        self.optimization.set_lrs(self.global_step)
        with self.run.autocast():
            logits = self.module(x)
            loss = self.criterion(logits.float(), y)
        optimizer = self.optimization.optimizer
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss if weight is None else loss * weight).backward()
        for listener in self.listeners:
            listener.on_before_optimizer_step()
        self.scaler.step(optimizer)
        self.scaler.update()
        for listener in self.listeners:
            listener.on_after_optimizer_step()
        self.global_step += 1
        return loss.detach(), logits

    def _rank_weight(self, images: int, step: int) -> float | None:
        """With several processes: this rank's share of the step's global batch, times the ranks, so
        that DDP's mean over the ranks of each rank's mean loss is the mean over the global batch,
        as one process computes it (the ranks' parts of a short last batch differ in size)."""
        if not self.group.is_distributed:
            return None
        planned = global_batch_size(self.run.batches.train_count, self.run.config.train.batch_size, step)
        return images * self.group.world_size / planned

    def _check_loss(self, value: float, step: int) -> None:
        if not math.isfinite(value):
            self._diverged(value, f"epoch {self.epoch}, step {step}")

    def _diverged(self, value: float, where: str) -> None:
        kept = f"; the last good checkpoint is kept at {self.checkpoint.path}" if self.checkpoint.path else ""
        raise TrainingDiverged(f"the loss became {value} at {where} (try a lower LR){kept}")

    @torch.no_grad()
    def _evaluate(self) -> dict | None:
        """Loss, accuracy and confusion of the validation images; the per-image outputs stay on the
        device in self.validation (ValidationRecords writes them at a best epoch): two reads from
        the device per pass, at its end."""
        run = self.run
        k = len(run.scan.class_names)
        labels, logits = [], []
        # Several processes: each rank evaluates rank 0's model (its running statistics included) outside
        # DDP, whose forward would wait for the other ranks at every batch of an uneven share.
        module = self.group.with_main_buffers(self.trained) if self.group.is_distributed else self.module
        self.module.eval()
        try:
            # SqueezeNet's head is a convolution: no per-image features (None, as with a failed capture).
            with head_inputs(run.model.get_submodule(run.info.head)) as features:
                for x, y in run.batches.val_batches():
                    if self.control.stop_requested:
                        raise Stopped
                    with run.autocast():
                        logits.append(module(x).float())
                    labels.append(y)
        finally:
            self.module.train()
        if not self.single_label:
            return self._task_validation(labels, logits, features)
        combine = self._across_ranks if run.group.is_distributed else self._on_this_process
        totals = combine(labels, logits, features, k)
        if totals is None:
            self.validation = None
            return None
        seen, loss_sum, confusion = totals
        per_class = {}
        for i, name in enumerate(run.scan.class_names):
            total = int(confusion[i].sum())
            per_class[name] = int(confusion[i, i]) / total if total else None
        recalls = [r for r in per_class.values() if r is not None]
        return {"loss": loss_sum / seen, "accuracy": int(confusion.diag().sum()) / seen,
                "balanced_accuracy": sum(recalls) / len(recalls), "per_class": per_class,
                "confusion": confusion.tolist()}

    def _task_validation(self, labels, logits, features) -> dict | None:
        """Loss and the task's metrics (mAP and F1s; MAE, RMSE, R²) of a multi-label or regression pass."""
        if not labels:
            self.validation = None
            return None
        y, out = torch.cat(labels), torch.cat(logits)
        loss_sum = self.task.val_loss_sum(out, y)
        if not math.isfinite(loss_sum):
            self._diverged(loss_sum, f"epoch {self.epoch}, validation")
        self.validation = ValidationOutputs(
            samples=self._validation_samples(len(y)), labels=y, logits=out,
            features=torch.cat(features) if sum(len(f) for f in features) == len(y) else None)
        return {"loss": loss_sum / len(y), "accuracy": None, "balanced_accuracy": None, "per_class": {},
                "confusion": [], "metrics": self.task.val_metrics(out, y)}

    def _on_this_process(self, labels, logits, features, k: int) -> tuple[int, float, torch.Tensor] | None:
        """(images, loss sum, confusion) of the validation pass; None without validation images."""
        if not labels:
            return None
        y, out = torch.cat(labels), torch.cat(logits)
        seen = len(y)
        loss_sum = nn.functional.cross_entropy(out, y, reduction="sum").item()
        if not math.isfinite(loss_sum):
            self._diverged(loss_sum, f"epoch {self.epoch}, validation")
        confusion = torch.bincount(y * k + out.argmax(1), minlength=k * k).view(k, k).cpu()
        self.validation = ValidationOutputs(
            samples=self._validation_samples(seen), labels=y, logits=out,
            features=torch.cat(features) if sum(len(f) for f in features) == seen else None)
        return seen, loss_sum, confusion

    def _across_ranks(self, labels, logits, features, k: int) -> tuple[int, float, torch.Tensor] | None:
        """The same over every rank's share: sums all-reduced, per-image outputs on rank 0."""
        run = self.run
        combined = combine_validation(run.group, labels, logits, features, k, len(run.scan.val), run.device)
        if not combined.seen:
            return None
        if not math.isfinite(combined.loss_sum):
            self._diverged(combined.loss_sum, f"epoch {self.epoch}, validation")
        self.validation = None if combined.labels is None else ValidationOutputs(
            samples=self._validation_samples(combined.seen), labels=combined.labels, logits=combined.logits,
            features=combined.features)
        return combined.seen, combined.loss_sum, combined.confusion

    def _validation_samples(self, seen: int) -> tuple | None:
        """The validation images in the order the pass saw them: scan.val without those that could
        not be decoded (both batch sources skip them and keep the order). None when the count
        disagrees (a file that failed once and decodes again), rather than records for wrong paths."""
        skipped = self.run.skipped.reasons
        samples = tuple(s for s in self.run.scan.val if s.path not in skipped)
        return samples if len(samples) == seen else None

    def _epoch_event(self, *, train_loss, train_accuracy, val, seconds, images_per_second, data_seconds,
                     compute_seconds, newly_unfrozen) -> EpochEvent:
        score = self.task.selection(val, train_accuracy, train_loss)
        is_best = self.best_score is None or score > self.best_score
        integrity = self.integrity.check(self.epoch)
        if self.group.is_distributed:  # checked on every rank's copy; a difference on any of them fails all
            integrity, self.rank_integrity = integrity_across_ranks(self.group, integrity, self.integrity.fingerprints)
        if is_best and integrity.intact:
            self.best_score, self.best_epoch = score, self.epoch
            self.best_accuracy = val["accuracy"] if val else None
            self.best_metrics = val.get("metrics") if val else None
        k = len(self.run.scan.class_names)
        return EpochEvent(
            epoch=self.epoch, epochs=self.run.config.train.epochs, train_loss=train_loss,
            train_accuracy=train_accuracy, val_loss=val["loss"] if val else None,
            val_accuracy=val["accuracy"] if val else None, per_class_accuracy=val["per_class"] if val else {},
            val_balanced_accuracy=val["balanced_accuracy"] if val else None,
            confusion_matrix=val["confusion"] if val else ([[0] * k] * k if self.single_label else []), seconds=seconds,
            images_per_second=images_per_second, data_seconds=data_seconds, compute_seconds=compute_seconds,
            lr=self.optimization.current_lrs(), trainable_params=self._trainable_params(),
            is_best=is_best and integrity.intact, newly_unfrozen=newly_unfrozen,
            skipped_files=len(self.run.skipped.reasons), feature_cache=self.uses_features,
            integrity=integrity, layers=self.telemetry.epoch_means() if self.telemetry else {},
            task=self.task.name, val_metrics=val.get("metrics", {}) if val else {})

    def _trainable_params(self) -> int:
        return sum(p.numel() for p in self.run.model.parameters() if p.requires_grad)

    def _result(self, started: float, epochs_run: int, stopped: str) -> FitResult:
        if self.group.is_distributed:  # the files that could not be read on any rank, not only this one's
            for reasons in self.group.gather_objects(self.run.skipped.reasons):
                for path, reason in reasons.items():
                    self.run.skipped.add(path, reason)
        return FitResult(
            run_dir=str(self.run.folder.path), checkpoint=self.checkpoint.path, best_epoch=self.best_epoch,
            best_val_accuracy=self.best_accuracy, epochs_run=epochs_run,
            seconds=time.perf_counter() - started,
            images_per_second=self.images_seen / max(1e-9, self.train_seconds), stopped=stopped,
            skipped=tuple(SkippedFile(p, r) for p, r in sorted(self.run.skipped.reasons.items())),
            integrity=self.integrity.last_report, task=self.task.name,
            best_val_metrics=None if self.single_label else self.best_metrics)


class _LossesReadLate:
    """The step losses, each read one step late. Reading a loss waits for the device; waiting for
    the previous step while this one is already queued keeps a GPU busy. A non-finite loss still
    ends the run before the epoch's weights are validated or saved."""

    def __init__(self, check: Callable[[float, int], None]) -> None:
        self.check = check
        self.unread: tuple[torch.Tensor, int, int] | None = None  # (loss, batch size, step)
        self.unreported: list[float] = []
        self.weighted_sum = 0.0

    def add(self, loss: torch.Tensor, batch_size: int, step: int) -> None:
        self.read()
        self.unread = (loss, batch_size, step)

    def read(self) -> None:
        if self.unread is None:
            return
        loss, batch_size, step = self.unread
        self.unread = None
        value = loss.item()
        self.check(value, step)
        self.weighted_sum += value * batch_size
        self.unreported.append(value)

    def take_unreported(self) -> list[float]:
        values, self.unreported = self.unreported, []
        return values
