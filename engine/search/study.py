"""The study on disk: Optuna's journal file, which every worker process (on this machine or on others
that see the same file) reads and appends to, and the bookkeeping around it.

- The study remembers what it searches (data, model, fixed settings, space): the same command continues
  it; other settings are refused rather than mixed into it.
- A trial in flight names its owner (host, pid) and beats a heart in the journal. A trial whose owner is
  gone (a killed search) is marked failed when a worker next asks for work: a killed search loses at most
  its trials in flight. Optuna's JournalStorage has no heartbeat of its own.
- Asking for a trial happens under a file lock, after counting the finished and running trials: K
  workers never start more than the trials wanted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from engine.errors import UserError

STUDY_NAME = "transfer-studio-search"
SETTINGS_ATTR = "transfer_studio"
HEARTBEAT_S = 30.0  # how often a running trial says it is alive
STALE_AFTER_S = 600.0  # a trial of another host silent this long is taken as lost (clocks may differ a little)


def quiet_optuna() -> None:
    """Optuna's own log lines and experimental-feature warnings are not for the person: the search
    prints one line per trial itself. UserError when Optuna is missing (an installation without the
    project's dependencies)."""
    try:
        import optuna
    except ImportError:
        raise UserError("search needs Optuna: pip install 'optuna>=3.4'") from None

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(path: str | os.PathLike):
    """A JournalStorage on the journal file `path` (created with its folder when missing); UserError in
    one line when the path cannot hold one or the file is not a journal."""
    import optuna
    from optuna.storages import JournalStorage

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"--storage {path} is a folder; name a journal file, e.g. {path / 'search.journal'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError as exc:
        raise UserError(f"cannot use --storage {path}: {exc.strerror or exc}") from None
    if first and not _journal_line(first):  # Optuna skips a bad last line, taking it for a write in progress
        raise UserError(f"--storage {path} is not an Optuna journal file (its first line is not a journal entry); "
                        f"name a new file")
    try:
        from optuna.storages.journal import JournalFileBackend as Backend  # optuna >= 4
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileStorage as Backend
    try:
        storage = JournalStorage(Backend(str(path)))
        storage.get_all_studies()
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--storage {path} is not an Optuna journal file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:80] if str(exc) else 'unreadable'}); name a new file") from None
    except optuna.exceptions.OptunaError as exc:
        raise UserError(f"--storage {path}: {str(exc).splitlines()[0][:160]}") from None
    return storage


def _journal_line(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return True  # the first write still under way (or cut short): Optuna's own reading decides
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(entry, dict) and "op_code" in entry


def open_study(storage, settings: dict[str, Any], sampler, pruner):
    """The search's study in `storage` (created when new). UserError when it holds a search of other
    settings: continuing one with another space or data would mix trials that cannot be compared."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    wanted = json.loads(json.dumps(settings))  # as the journal gives it back (tuples become lists)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
    elif stored != wanted:
        raise UserError(f"the storage holds a search of other settings ({_first_difference(stored, wanted)}); "
                        f"continue it with the same flags, or give another --storage")
    return study


def _first_difference(then: Any, now: Any, where: str = "") -> str:
    if isinstance(then, dict) and isinstance(now, dict):
        for key in sorted(set(then) | set(now)):
            if then.get(key) != now.get(key):
                return _first_difference(then.get(key), now.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'settings'}: {json.dumps(then)} there, {json.dumps(now)} here"


# --- who runs a trial, and whether they still do ---------------------------------------------------


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux): a pid reused by another process
    has another one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[19])  # Z: a zombie, dead but not reaped
    except (OSError, IndexError, ValueError):
        return None


def _alive(found: dict[str, Any]) -> bool:
    pid = found.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds the pid: alive, though maybe not ours (the start tells)
    except OSError:
        return True
    start = _process_start(pid)
    if os.path.exists(f"/proc/{pid}/stat") and start is None:
        return False  # a zombie
    return found.get("start") is None or start is None or start == found.get("start")


def stale_trials(study, now: float | None = None) -> list:
    """The RUNNING trials whose worker is gone: on this host its process has ended, elsewhere its
    heartbeat stopped STALE_AFTER_S ago. A running trial naming no owner was asked by a worker that
    died before it could say so (the ask lock makes that the only way)."""
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    host = socket.gethostname()
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        found = trial.user_attrs.get("owner")
        beat = trial.user_attrs.get("heartbeat")
        if not isinstance(found, dict):
            lost.append(trial)
        elif found.get("host") == host:
            if not _alive(found):
                lost.append(trial)
        elif not isinstance(beat, (int, float)) or now - beat > STALE_AFTER_S:
            lost.append(trial)
    return lost


def fail_trial(study, number: int, reason: str) -> None:
    from optuna.trial import TrialState

    set_trial_attr(study, number, "error", reason)
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def set_trial_attr(study, number: int, key: str, value: Any) -> None:
    """A user attribute of trial `number`, whichever worker runs it."""
    storage = study._storage  # noqa: SLF001 - Optuna keeps the storage of a Study only here
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               number)
    storage.set_trial_user_attr(trial_id, key, value)


class Heartbeat:
    """Writes the time into a running trial every HEARTBEAT_S, from a thread of its own, so that a long
    epoch is not taken for a lost worker."""

    def __init__(self, study, number: int, every: float = HEARTBEAT_S) -> None:
        self.study, self.number, self.every = study, number, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"search-heartbeat-{number}", daemon=True)

    def __enter__(self) -> Heartbeat:
        set_trial_attr(self.study, self.number, "heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                set_trial_attr(self.study, self.number, "heartbeat", time.time())
            except Exception:  # noqa: BLE001 - finished elsewhere or storage busy: the trial itself decides
                return


@contextlib.contextmanager
def ask_lock(storage_path: str | os.PathLike) -> Iterator[None]:
    """One worker at a time counts trials and asks for a new one. flock works on local disks and, on
    Linux, over NFS (as a POSIX lock); where fcntl is missing the lock is skipped (a search may then
    run a trial or two more than asked)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(f"{os.fspath(storage_path)}.ask-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def counts(study) -> dict[str, int]:
    """{"complete", "pruned", "failed", "running"}: the study's trials by state."""
    from optuna.trial import TrialState

    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running"}
    found = dict.fromkeys(names.values(), 0)
    for trial in study.get_trials(deepcopy=False):
        if trial.state in names:
            found[names[trial.state]] += 1
    return found
