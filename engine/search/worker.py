"""One search worker: ask the study for a trial, train it as an ordinary run, tell the study how it went,
until the study holds the trials wanted.

Several workers (processes here, array tasks on a cluster) run this same loop on one journal file. A
trial's run folder is <runs folder>/trial-NNNN, NNNN its number in the study, so workers never share
one. Trials are compared on the best validation accuracy of their run (the checkpoint's); the pruner
sees each epoch's.

Every trial is a run of the trainer as a search trial (engine.training.search_trial): the same training
and proofs as `train`, with the model, scan and cached features a worker's trials share. A head-only
search measures --adapt-norm auto once, in its first trial, and keeps that choice for the later trials
(NORM_ATTR): measuring fits the head twice more, in every trial, to answer the same question.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from engine.config import RunConfig
from engine.errors import RunFailed, TrainingDiverged, UserError
from engine.events import Callbacks, TrainingControl
from engine.search import study as studies
from engine.search.pruning import PRUNED, PruneListener
from engine.search.space import SearchSpace, draw, optuna_suggest, train_flags, trial_config

STOPPED_REASON = "stopped by the person"
NORM_ATTR = "adapt_norm"  # the study's (and each trial's): "on" or "off", as the first trial measured it
KEEP = ("default", "all", "best")  # run folders: pruned ones deleted | all kept | only the best kept


@dataclass(frozen=True)
class SearchJob:
    base: RunConfig  # every setting a trial does not draw; out_dir is the runs folder
    space: SearchSpace
    stage_groups: tuple[tuple[str, ...], ...]  # the model's stage groups below its head, input first
    trials: int  # finished trials (complete or pruned) wanted in the study, over every worker and restart
    storage: Path
    keep: str = "default"
    timeout_s: float | None = None  # no new trial after this long (the trial in flight finishes)
    seed: int | None = None  # the sampler's; None: each worker its own, so workers draw different trials

    def settings(self) -> dict[str, Any]:
        """What the study must agree on to be continued (the device, workers and trial count may change)."""
        data, train = self.base.data, self.base.train
        return {"data": str(Path(data.root).expanduser().resolve()), "model": self.base.model.arch,
                "weights": self.base.model.weights, "head_only": self.space.head_only, "space": self.space.describe(),
                "fixed": {"image_size": data.image_size, "val_fraction": data.val_fraction,
                          "batch_size": train.batch_size, "seed": train.seed, "optimizer": train.optimizer,
                          "schedule": train.schedule, "warmup_epochs": train.warmup_epochs,
                          "class_weights": train.class_weights, "precision": train.precision,
                          "feature_views": train.feature_views}}

    def run_dir(self, number: int) -> Path:
        return Path(self.base.out_dir) / f"trial-{number:04d}"

    def config(self, values: dict[str, Any], number: int, adapt_norm: str | None = None) -> RunConfig:
        """Trial `number`'s run config; `adapt_norm` replaces the base's setting (the study's measured choice)."""
        config = trial_config(self.base, values, self.stage_groups, str(self.run_dir(number)))
        if adapt_norm is None:
            return config
        return replace(config, train=replace(config.train, adapt_norm=adapt_norm))


def trial_settings(config: RunConfig, tensorboard: bool = False) -> RunConfig:
    """`config` as a search's fixed settings: no telemetry (nobody watches a trial's layers) and no
    TensorBoard files unless asked (`tensorboard`): each trial's metrics.jsonl and the study hold its figures."""
    return replace(config, train=replace(config.train, telemetry=False, tensorboard=tensorboard))


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial, as its worker reports it (the progress line)."""

    number: int
    state: str  # "complete" | "pruned" | "failed" | "stopped" (failed in the study: the person stopped it)
    value: float | None  # best val accuracy (complete), the last reported (pruned)
    epochs_run: int
    seconds: float
    error: str | None
    finished: int  # complete + pruned trials in the study now
    trials: int
    best_value: float | None
    best_number: int | None
    eta_seconds: float | None


def make_sampler(seed: int | None):
    """TPE over the conditional space: multivariate with groups (strategy-dependent knobs), and a
    constant liar so parallel workers do not all draw next to the same promising point."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner():
    """The median rule from the second epoch: a trial below the median of earlier trials at the same
    epoch stops; the first five trials always run to their end."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def load_study(job: SearchJob):
    studies.quiet_optuna()
    storage = studies.open_storage(job.storage)
    return studies.open_study(storage, job.settings(), make_sampler(job.seed), make_pruner())


def run_worker(study, job: SearchJob, on_trial: Callable[[TrialOutcome], None] = lambda outcome: None,
               keep_going: Callable[[], bool] = lambda: True,
               after_first_trial: Callable[[], None] | None = None, control: TrainingControl | None = None,
               on_trial_started: Callable[[int], None] = lambda number: None) -> int:
    """Train trials of `study` (load_study) until it holds job.trials finished ones (or the timeout, or
    keep_going() says no, or `control` is stopped); returns the trials this worker ran. A diverged trial
    fails and the search goes on; a run that fails otherwise (frozen tensors changed, images gone) fails
    its trial and raises. `control` (the window's Stop) ends the trial in flight at its next batch and
    fails it, as Ctrl-C does in the command line, without raising. on_trial_started(number) and
    on_trial(outcome) say when each trial starts and ends (a progress line, a table)."""
    from engine.training.search_trial import SearchTrial
    from engine.training.shared_parts import SharedParts

    control = control or TrainingControl()
    # A pruned trial's folder is deleted (unless every folder is kept): it writes no best-epoch records.
    search_trial = SearchTrial(SharedParts(), records_skipped_when=() if job.keep == "all" else (PRUNED,))
    started, ran, failed = time.monotonic(), 0, 0
    while (keep_going() and not control.stop_requested
           and (job.timeout_s is None or time.monotonic() - started < job.timeout_s)):
        trial = _next_trial(study, job)
        if trial is None:
            break
        on_trial_started(trial.number)
        outcome = _run_trial(study, job, trial, control, search_trial)
        ran += 1
        failed += outcome.state == "failed"
        if job.keep == "best":
            prune_run_folders(study, job)
        on_trial(outcome)
        if ran == 1 and after_first_trial is not None:
            after_first_trial()
        if failed >= job.trials:  # every draw diverges: the space, not bad luck
            raise RunFailed(f"{failed} trials failed in this worker (last: {outcome.error}); narrow the space "
                            f"(--space base_lr=LOW:HIGH)")
    return ran


def _next_trial(study, job: SearchJob):
    """A new trial with its draw, or None when finished and running trials make up job.trials."""
    with studies.ask_lock(job.storage):
        for lost in studies.stale_trials(study):
            studies.fail_trial(study, lost.number, "its worker ended while it ran (killed, or its node lost)")
            _record_lost_run(job, lost.number)
        found = studies.counts(study)
        if found["complete"] + found["pruned"] + found["running"] >= job.trials:
            return None
        trial = study.ask()
        trial.set_user_attr("owner", studies.owner())
        values = draw(job.space, optuna_suggest(trial))
        trial.set_user_attr("values", values)
        trial.set_user_attr("run_dir", str(job.run_dir(trial.number)))
        measured = study.user_attrs.get(NORM_ATTR) if _measures_norm_once(job) else None
        if measured is not None:
            trial.set_user_attr(NORM_ATTR, measured)
        return trial


def _measures_norm_once(job: SearchJob) -> bool:
    """Whether every trial would measure the same normalization choice: head-only trials all train a
    head on the same cached plain features, with --adapt-norm auto."""
    return job.space.head_only and job.base.train.adapt_norm == "auto"


def _keep_norm_choice(study, job: SearchJob, run_dir: Path) -> None:
    """The first trial that measured --adapt-norm auto gives the study its choice, for the later trials."""
    from engine.runs.run_folder import RunFolder

    if not _measures_norm_once(job) or NORM_ATTR in study.user_attrs or not (run_dir / "run.json").exists():
        return
    choice = RunFolder(run_dir).read_run().norm_choice
    if choice is not None and choice.measured:
        study.set_user_attr(NORM_ATTR, "on" if choice.adapted else "off")


def _record_lost_run(job: SearchJob, number: int) -> None:
    """The lost trial's run.json says "failed" rather than "running" forever."""
    from engine.runs.run_folder import RunFolder
    from engine.training.listeners import record_failure

    folder = RunFolder(job.run_dir(number))
    if folder.exists():
        record_failure(folder, RuntimeError("the search worker running this trial ended (killed) during it"))


def _run_trial(study, job: SearchJob, trial, control: TrainingControl, search_trial) -> TrialOutcome:
    from optuna.trial import TrialState

    from engine.training.trainer import fit

    started = time.perf_counter()
    config = job.config(trial.user_attrs["values"], trial.number, trial.user_attrs.get(NORM_ATTR))

    def report(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    pruner = PruneListener(report)
    try:
        with studies.Heartbeat(study, trial.number):
            result = fit(config, Callbacks(), control, scan=search_trial.parts.scan(config), listeners=[pruner],
                         trial=search_trial)
    except TrainingDiverged as exc:  # an LR too high for this data: a finding about the space, not a fault
        reason = str(exc).splitlines()[0]
        studies.fail_trial(study, trial.number, reason)
        return _outcome(study, job, trial.number, "failed", None, 0, started, reason)
    except BaseException as exc:  # anything else ends the search too; the trial is not left "running"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        studies.fail_trial(study, trial.number, reason[:300])
        raise
    _keep_norm_choice(study, job, job.run_dir(trial.number))
    if result.stopped == "user":  # Stop: the run ends as a stopped run, its trial failed (not compared)
        studies.fail_trial(study, trial.number, STOPPED_REASON)
        return _outcome(study, job, trial.number, "stopped", None, result.epochs_run, started, STOPPED_REASON)
    if result.stopped == PRUNED:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        if job.keep != "all":
            shutil.rmtree(job.run_dir(trial.number), ignore_errors=True)
        return _outcome(study, job, trial.number, "pruned", pruner.last_value, result.epochs_run, started, None)
    if result.best_val_accuracy is None:  # validated up front; a dataset changed since would end here
        studies.fail_trial(study, trial.number, "no validation accuracy")
        raise UserError(f"trial {trial.number} had no validation images to be compared on")
    trial.set_user_attr("epochs_run", result.epochs_run)
    study.tell(trial, result.best_val_accuracy, skip_if_finished=True)
    return _outcome(study, job, trial.number, "complete", result.best_val_accuracy, result.epochs_run, started, None)


def _outcome(study, job: SearchJob, number: int, state: str, value, epochs_run: int, started: float,
             error: str | None) -> TrialOutcome:
    from optuna.trial import TrialState

    found = studies.counts(study)
    finished = found["complete"] + found["pruned"]
    best = best_trial(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.datetime_start and t.datetime_complete]
    eta = None
    if done:  # the mean trial's length, the remaining trials shared by the workers running now
        mean = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done)
        eta = max(0, job.trials - finished) * mean / max(1, found["running"] + 1)
    return TrialOutcome(number=number, state=state, value=value, epochs_run=epochs_run,
                        seconds=time.perf_counter() - started, error=error, finished=finished, trials=job.trials,
                        best_value=best.value if best else None, best_number=best.number if best else None,
                        eta_seconds=eta)


def best_trial(study):
    """The complete trial of the highest value (the earliest among equals), or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def prune_run_folders(study, job: SearchJob) -> None:
    """--prune-runs: only the best trial's run folder stays. A trial seen as not the best never becomes
    it later (the best only moves to newer trials), so workers deleting at once agree."""
    from optuna.trial import TrialState

    best = best_trial(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if best is None or trial.number != best.number:
            shutil.rmtree(job.run_dir(trial.number), ignore_errors=True)


def summary(study, job: SearchJob) -> dict[str, Any]:
    """The search's result: the best trial's draw, value and the `train` flags that reproduce its run;
    the study's complete and pruned trial counts; the journal file."""
    found = studies.counts(study)
    best = best_trial(study)
    best_part = None
    if best is not None:
        values = best.user_attrs.get("values", best.params)
        config = job.config(values, best.number, best.user_attrs.get(NORM_ATTR))
        best_part = {"params": values, "value": best.value, "flags": train_flags(config),
                     "trial": best.number, "run_dir": best.user_attrs.get("run_dir")}
    return {"best": best_part, "trials": found["complete"], "pruned": found["pruned"],
            "storage": str(Path(job.storage).expanduser().resolve())}
