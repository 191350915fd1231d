"""MLflow, an optional extra used when asked for (`train --mlflow URI`): the run's configuration as
parameters, its figures per epoch as metrics (engine.training.scalars' names, step = epoch), and at
the end the checkpoint with a model card of it, run.json and metrics.jsonl as artifacts.

It lives in deploy because the card is deploy's (engine.deploy.model_card). Only MlflowClient is
used, never the fluent API: no process-wide active run is left behind for the next run in the same
process (the window trains many). Connecting is checked before training starts (a missing package
or a store that cannot be opened is one line, exit 2); a failure once the run trains is one warning
and the run goes on, as with TensorBoard. A continued run (--resume) logs into the MLflow run that
carries the same run folder's tag, if the store has one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.errors import UserError
from engine.events import BatchEvent, Callbacks, EpochEvent, FitResult, RunStarted
from engine.runs.run_folder import RunFolder
from engine.training.scalars import config_values, epoch_scalars

log = logging.getLogger("transfer_studio")

INSTALL = "pip install 'transfer-studio[mlflow]'"
DEFAULT_EXPERIMENT = "transfer-studio"
RUN_DIR_TAG = "transfer_studio.run_dir"  # finds the MLflow run of a run folder again when it continues
PARAM_LENGTH = 6000  # MLflow's limit for a parameter's value (since 2.x)
PER_BATCH = 100  # MLflow's limit of parameters in one log_batch call


@dataclass(frozen=True)
class MlflowTarget:
    """An open tracking store and the experiment runs go to."""

    client: Any  # mlflow.tracking.MlflowClient
    experiment_id: str
    uri: str


def connect(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> MlflowTarget:
    """The store at `uri` with `experiment` (made if missing); UserError in one line when MLflow is
    not installed or the store cannot be used."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(f"--mlflow needs MLflow, which is not installed: {INSTALL}") from None
    for name in ("mlflow", "alembic"):  # their notes about creating tables are not the person's concern
        logging.getLogger(name).setLevel(logging.WARNING)
    # A server that is down: MLflow's own retries take minutes per call, each holding training up
    # (logging is synchronous). Seconds here, unless the person chose otherwise.
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(name, value)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else client.create_experiment(experiment, artifact_location=_artifact_location(uri)))
    except ImportError as exc:  # a store of a kind whose packages are missing (sqlite needs SQLAlchemy)
        raise UserError(f"the MLflow store {uri} needs {exc.name or 'a package that is missing'}: {INSTALL}") from None
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for a store it cannot open
        raise UserError(f"cannot use the MLflow store {uri}: {_one_line(exc)}") from None
    return MlflowTarget(client, experiment_id, uri)


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store: artifacts in mlartifacts/ beside the database (MLflow's own default
    is ./mlruns in whatever folder the command ran from). Other stores decide themselves."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return (Path(uri[len(prefix):]).expanduser().resolve().parent / "mlartifacts").as_uri()


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class MlflowLog(Callbacks):
    """Rank 0's callbacks: passes every event on to `inner` (the progress printer, the event lines),
    then logs it. `finish` or `fail` ends the MLflow run after fit returned or raised."""

    def __init__(self, target: MlflowTarget, inner: Callbacks, resume: bool) -> None:
        self.target, self.inner, self.resume = target, inner, resume
        self.client = target.client
        self.run_id: str | None = None
        self.failed = False  # the first failure ends the logging, said once

    # --- events, passed on first --------------------------------------------------------------------

    def on_status(self, text: str, done: int = 0, total: int = 0) -> None:
        self.inner.on_status(text, done, total)

    def on_batch_end(self, event: BatchEvent) -> None:
        self.inner.on_batch_end(event)

    def on_run_started(self, event: RunStarted) -> None:
        self.inner.on_run_started(event)
        self._guarded(self._start, event.run_dir)

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.inner.on_epoch_end(event)
        if self.run_id is not None:
            self._guarded(self._log_epoch, event)

    def finish(self, result: FitResult) -> None:
        if self.run_id is not None:
            self._guarded(self._log_artifacts, result)
            self._end("KILLED" if result.stopped == "user" else "FINISHED")

    def fail(self, error: BaseException) -> None:
        if self.run_id is not None:
            self._end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    # --- what is logged ---------------------------------------------------------------------------------

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        if self.failed:
            return
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking server down or full: said once, the run matters more
            self.failed = True
            log.warning(f"transfer-studio: warning: MLflow logging stopped ({_one_line(exc)}); the run goes on")

    def _start(self, run_dir: str) -> None:
        folder = str(Path(run_dir).resolve())
        previous = self._previous_run(folder) if self.resume else None
        if previous is not None:
            self.run_id = previous.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = set(previous.data.params)  # a parameter cannot change: those of the first start stay
        else:
            run = self.client.create_run(self.target.experiment_id, tags={RUN_DIR_TAG: folder},
                                         run_name=Path(folder).name)
            self.run_id, logged = run.info.run_id, set()
        from mlflow.entities import Param

        config = RunFolder(run_dir).read_run().config  # as the run recorded it (out_dir resolved)
        params = [Param(name, str(value)[:PARAM_LENGTH]) for name, value in config_values(config).items()
                  if name not in logged]
        for first in range(0, len(params), PER_BATCH):
            self.client.log_batch(self.run_id, params=params[first:first + PER_BATCH])

    def _previous_run(self, folder: str):
        if "'" in folder:  # cannot be quoted in MLflow's filter syntax: a new MLflow run instead
            return None
        runs = self.client.search_runs([self.target.experiment_id], f"tags.`{RUN_DIR_TAG}` = '{folder}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _log_epoch(self, event: EpochEvent) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, event.epoch) for name, value in epoch_scalars(event).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _log_artifacts(self, result: FitResult) -> None:
        folder = RunFolder(result.run_dir)
        for path in (folder.record_path, folder.metrics_path):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        if result.checkpoint is None:
            return
        from engine.deploy.model_card import build_card, card_markdown, card_path

        checkpoint = Path(result.checkpoint)
        self.client.log_artifact(self.run_id, str(checkpoint), "model")
        card = build_card(checkpoint, checkpoint, "checkpoint")
        with tempfile.TemporaryDirectory() as scratch:
            json_card = card_path(Path(scratch) / checkpoint.name)
            json_card.write_text(json.dumps(card, indent=2) + "\n")
            markdown = json_card.with_name(checkpoint.name + ".card.md")
            markdown.write_text(card_markdown(card))
            for path in (json_card, markdown):
                self.client.log_artifact(self.run_id, str(path), "model")

    def _end(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # noqa: BLE001 - as _guarded, and said only if nothing was said before
            if not self.failed:
                self.failed = True
                log.warning(f"transfer-studio: warning: MLflow could not mark the run {status.lower()} "
                            f"({_one_line(exc)})")

