"""One run's folder: every file name and format of a run, and nowhere else.

    run.json        the configuration, plan, classes, preprocessing; at the end the outcome
    metrics.jsonl   one JSON line per epoch (losses, accuracies, LRs, integrity, telemetry)
    checkpoint.pt   the best epoch's weights (see engine.model.checkpoint)
    resume.pt       the full training state after the last completed epoch
    val_predictions.csv  the best epoch's validation images: true, predicted, loss, top 3 (engine.insight.evaluation)
    embeddings.csv  the same images' penultimate features projected to 2-D (engine.runs.embeddings)
    val_logits.pt   the same images' logits and labels, for calibration (engine.runs.val_logits)
    tensorboard/    TensorBoard event files and projector data (engine.training.tensorboard_log)
    val_outputs.pt  multi-label and regression: the best epoch's validation outputs and targets
                    (engine.runs.val_logits.write_val_outputs), which evaluate reads

Each format carries a version that is checked on load: a newer or unknown one is refused with one
line, never half-read. run.json and metrics.jsonl are read as typed records (engine.runs.records):
`read_run` and `read_epochs` are how anything reads them; `read_record` and `read_metrics` give
the same files' raw JSON, for what rewrites them or copies them verbatim.
`RunFolder.load_config` gives a run's configuration; `latest_run` finds
the most recent run under a runs folder, so the window and the CLI can continue or export it
after a restart. While a run trains its folder is locked (`.lock`).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.model.checkpoint import safe_torch_load
from engine.atomic import atomic_write_bytes, durable_fsync
from engine.config import RunConfig
from engine.errors import UserError
from engine.runs.records import EpochRecord, RunRecord
from engine.runs.run_name import clean_name

RUN_RECORD_VERSION = 1
# 2: adds the freeze-integrity fingerprints, later kept with the other listeners' states under
# "listeners" (a key older readers of 2 ignore, as they did); 1 (round 1) is still read.
RESUME_VERSION = 2


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    # --- names ----------------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def resume_path(self) -> Path:
        return self.path / "resume.pt"

    @property
    def predictions_path(self) -> Path:
        return self.path / "val_predictions.csv"

    @property
    def val_logits_path(self) -> Path:
        return self.path / "val_logits.pt"

    @property
    def val_outputs_path(self) -> Path:
        return self.path / "val_outputs.pt"

    @property
    def embeddings_path(self) -> Path:
        return self.path / "embeddings.csv"

    @property
    def tensorboard_path(self) -> Path:
        return self.path / "tensorboard"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @contextmanager
    def locked(self):
        """Held for a whole training: a second training on the same folder is refused at once,
        instead of interleaving metrics and mixing checkpoint and resume state of two runs."""
        created = _first_missing(self.path)  # the outermost folder made here, removed again if left empty
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"cannot use {self.path} as a run folder: it is a file, not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")
        except OSError as exc:
            if created is not None:
                _remove_empty_run_folder(self, created)
            raise UserError(f"cannot use {self.path} as a run folder: {exc.strerror or exc}") from None
        try:
            _try_lock(handle, self.path)
            self.remove_partial_files()
            yield self
        finally:
            if created is not None and not self.exists():  # failed before it held a run: leave nothing behind
                _remove_empty_run_folder(self, created)
            handle.close()  # closing releases the lock, also when the process dies

    def in_use(self) -> bool:
        """True while a training (this process or another) holds the folder's lock. A shared lock
        is tried and let go at once: it never blocks, and two readers asking at the same moment
        do not see each other as a training."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks (see _try_lock), so no way to tell
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False  # no lock file: never trained here
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases the probe's lock, if it got one
        return False

    def refuse_if_used(self) -> None:
        """A new run never replaces another run's files."""
        if self.exists() or self.has_checkpoint():
            raise UserError(f"{self.path} already holds a run; continue it (--resume / Continue training) "
                            f"or choose another output folder")

    def exists(self) -> bool:
        return self.record_path.is_file()

    def can_resume(self) -> bool:
        return self.resume_path.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    # --- run.json --------------------------------------------------------------------------------

    def write_record(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        body = {"run_format": RUN_RECORD_VERSION, **record}
        atomic_write_bytes(self.record_path, (json.dumps(body, indent=2) + "\n").encode())

    def read_run(self) -> RunRecord:
        """run.json as a typed record; UserError (one line) when the folder holds no readable run."""
        return RunRecord.from_dict(self.read_record())

    def recorded_start(self) -> str | None:
        """When the run in this folder first started (a continued run keeps that start); None for
        a folder without a readable one."""
        try:
            return self.read_run().started if self.exists() else None
        except UserError:
            return None

    def recorded_name(self) -> str | None:
        """The name the person gave the run, which a continued run keeps (None: none, or unreadable)."""
        try:
            return self.read_run().name if self.exists() else None
        except UserError:
            return None

    def rename(self, typed: str) -> str:
        """Give the run the name `typed` (engine.runs.run_name; "" = its folder's name again) and return
        the name kept ("" for none). Refused while a training holds the folder, and done holding its
        lock: a training rewrites run.json by read, change, write (status, result), and the two writes
        must not cross, or one would undo the other."""
        name = clean_name(typed)
        if self.in_use():
            raise UserError(f"{self.path.name} is training: rename it when it has ended")
        if not self.exists():
            raise UserError(f"{self.path} is not a run folder (no {self.record_path.name})")
        with self.locked():  # a training starting this moment is refused, not interleaved
            record = self.read_record()
            record.pop("run_format", None)
            record.pop("name", None)
            self.write_record({**record, "name": name} if name else record)
        return name

    def read_record(self) -> dict[str, Any]:
        """run.json's raw JSON (checked to be a run record of a known version): for update_record;
        readers use read_run."""
        if not self.record_path.is_file():
            raise UserError(f"{self.path} is not a run folder (no {self.record_path.name})")
        try:
            record = json.loads(self.record_path.read_text())
        except RecursionError:  # json's decoder recurses once per bracket
            raise UserError(f"cannot read {self.record_path}: nested too deeply") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {self.record_path}: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise UserError(f"{self.record_path} is not a Transfer Studio run record")
        _check_version(record.get("run_format", 1), RUN_RECORD_VERSION, self.record_path)
        return record

    def update_record(self, **fields: Any) -> None:
        """Add the outcome (verdicts, result) to run.json, keeping what it said."""
        record = self.read_record()
        record.pop("run_format", None)
        record.update(fields)
        self.write_record(record)

    def load_config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_run().config)

    # --- metrics.jsonl -----------------------------------------------------------------------------

    def start_metrics(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path.write_text("")

    def append_metrics(self, line: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            durable_fsync(fh.fileno())

    def keep_metrics_through(self, epoch: int) -> None:
        """On resume: drop lines of epochs after the resume state (a kill after the metrics line was
        written but before resume.pt was), so each epoch appears once."""
        kept = [line.raw for line in self.read_epochs() if line.epoch <= epoch]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(line) + "\n" for line in kept).encode())

    def remove_partial_files(self) -> None:
        """Temporary files of writes a crash interrupted (only while holding the lock)."""
        for partial in self.path.glob(".*.tmp"):
            partial.unlink(missing_ok=True)

    def read_epochs(self) -> list[EpochRecord]:
        """metrics.jsonl's epochs in order. A line cut by a crash, or one that is no epoch line,
        ends the readable history; a file that cannot be read is an empty one."""
        try:
            text = self.metrics_path.read_text() if self.metrics_path.is_file() else ""
        except (OSError, ValueError):  # unreadable, or not UTF-8
            return []
        epochs = []
        for line in text.splitlines():
            try:
                record = EpochRecord.from_dict(json.loads(line))
            except (ValueError, RecursionError):
                record = None
            if record is None:
                break
            epochs.append(record)
        return epochs

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch lines' raw JSON, as written (read_epochs decides which lines are epochs)."""
        return [epoch.raw for epoch in self.read_epochs()]

    # --- resume.pt ---------------------------------------------------------------------------------

    def resume_payload(self, loop_state: dict[str, Any], listener_states: dict[str, dict]) -> dict[str, Any]:
        """resume.pt's content: the epoch loop's state (epoch, step, model, optimizer, ...) at the
        top, each listener's own state under "listeners" by its state key."""
        return {"format_version": RESUME_VERSION, **loop_state, "listeners": listener_states}

    def read_resume_state(self) -> dict[str, Any]:
        if not self.can_resume():
            raise UserError(self._why_not_resumable())
        state = safe_torch_load(self.resume_path)
        if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
            raise UserError(f"{self.resume_path} is not a Transfer Studio resume file")
        _check_version(state.get("format_version"), RESUME_VERSION, self.resume_path)
        return _with_listener_states(state)

    def _why_not_resumable(self) -> str:
        """The true reason a folder without resume.pt cannot continue. resume.pt is the last file
        of an epoch (written after its metrics line and checkpoint): a process that ended in
        between leaves an epoch recorded whose optimizer, schedule and RNG state are lost."""
        if not self.exists():
            return f"{self.path} is not a run folder (no {self.record_path.name})"
        recorded = self.read_epochs()
        if not recorded:
            return (f"{self.path} was stopped before its first epoch ended, so there is nothing to "
                    f"continue; start a new run with the same settings instead")
        kept = f"; its {self.checkpoint_path.name} is kept" if self.has_checkpoint() else ""
        return (f"{self.path}: epoch {recorded[-1].epoch} finished but the state to continue from "
                f"({self.resume_path.name}) was not saved (the run ended before it was written), so it "
                f"cannot continue exactly; start a new run with the same settings in another folder{kept}")


def _with_listener_states(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with "listeners" as written now. Older files have none (a listener without a state
    starts fresh) or kept the freeze-integrity fingerprints at the top."""
    listeners = dict(state.get("listeners") or {})
    legacy_fingerprints = state.pop("integrity", None)
    if legacy_fingerprints is not None:
        listeners.setdefault("FreezeIntegrity", {"fingerprints": legacy_fingerprints})
    return {**state, "listeners": listeners}


def _first_missing(path: Path) -> Path | None:
    missing = None
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _remove_empty_run_folder(folder: RunFolder, up_to: Path) -> None:
    """The run folder and the parents made for it, up to `up_to`, each only when empty."""
    try:
        folder.lock_path.unlink(missing_ok=True)
        for path in (folder.path, *folder.path.parents):
            path.rmdir()  # only when empty: nothing anyone wrote is removed
            if path == up_to:
                break
    except OSError:
        pass


def _try_lock(handle, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; the refusal of used folders still holds
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError(f"{path} is in use by another training; wait for it to end or choose another "
                        f"output folder") from None


def _check_version(found: Any, supported: int, path: Path) -> None:
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise UserError(f"{path} has an unknown format version ({found!r}); it cannot be read")
    if found > supported:
        raise UserError(f"{path} was written by a newer Transfer Studio (format {found}, "
                        f"this one reads up to {supported}); update Transfer Studio to open it")


def list_runs(runs_root: str | os.PathLike) -> list[RunFolder]:
    """Every run folder directly under `runs_root`, newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = [run for run in map(RunFolder, root.iterdir()) if run.exists()]
    return sorted(runs, key=lambda r: r.record_path.stat().st_mtime, reverse=True)


def latest_run(runs_root: str | os.PathLike) -> RunFolder | None:
    """The most recently written run folder directly under `runs_root`, or None."""
    runs = list_runs(runs_root)
    return runs[0] if runs else None
