"""Errors the person can act on. Their message is one line; the CLI prints it and exits with 2."""

import errno
import os
import re
import signal
from typing import Sequence


class UserError(Exception):
    """Bad input or an unavailable resource, explained in one line."""


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached nor downloadable."""


class UnsafeFileError(UserError):
    """A file would need arbitrary code to load, or safe loading was switched off."""


class RunFailed(UserError):
    """A run that started could not finish soundly; the CLI exits with 1 (not 2: the input was fine)."""


class OutputLost(RunFailed):
    """The command's result could not be written (a full, closed or missing stdout); its work, a
    run's files included, is done and kept."""


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite."""


class FrozenTensorsChanged(RunFailed):
    """A tensor the plan froze differs, bit for bit, from what was loaded."""


class NoUsableImages(RunFailed):
    """No training image of an epoch could be read: files deleted, replaced or unreadable mid-run."""


# Where memory runs out, what to make smaller: per CLI command, and a general fallback.
MEMORY_ADVICE = {
    "train": "try a smaller --image-size or --batch-size",
    "training": "try a smaller image size or batch size",  # the window's words: it has no flags
    "lr-find": "try a smaller --image-size or --batch-size",
    "predict": "try fewer images at once",
    "export": "try a smaller model or another format",
    "layers": "try fewer --classes",
    "demo-data": "try a smaller --size",
}


def out_of_memory_message(exc: BaseException, command: str) -> str | None:
    """One line for an allocation that failed (host or GPU), with what to make smaller; None when
    `exc` is not about memory (then it is a bug and keeps its traceback)."""
    text = str(exc)
    is_memory = (isinstance(exc, MemoryError) or "out of memory" in text.lower()
                 or "not enough memory" in text or "DefaultCPUAllocator" in text)
    if not is_memory:
        return None
    detail = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    advice = MEMORY_ADVICE.get(command, "try smaller sizes")
    return f"out of memory in {command} ({detail[:200]}); {advice}"


def path_problem_message(exc: OSError) -> str | None:
    """One line for an OSError that says a path given cannot exist (a name over 255 bytes, a path
    over 4096); None for any other OSError (a bug, whose traceback is needed)."""
    if exc.errno != errno.ENAMETOOLONG:
        return None
    name = exc.filename if exc.filename is not None else exc.filename2
    shown = os.fsdecode(name) if isinstance(name, (str, bytes)) else ""
    shown = shown if len(shown) <= 80 else f"{shown[:40]}…{shown[-30:]} ({len(shown)} characters)"
    limits = "a name over 255 bytes or a path over 4096"
    return f"path too long ({limits}): {shown}" if shown else f"a path given is too long ({limits})"


WORKER_DIED = "DataLoader worker (pid"  # how torch's messages about a dead loader worker begin


def worker_death_message(exc: BaseException, exit_codes: Sequence[int] = (),
                         advice: str = "try --workers 0") -> str | None:
    """One line for torch's "DataLoader worker (pid(s) ...) exited unexpectedly" (or "is killed by
    signal"), naming the cause where it is known: from `exit_codes` (the dead workers'; negative: the
    signal) or from torch's message. None when `exc` is about something else."""
    text = str(exc)
    if WORKER_DIED not in text:
        return None
    cause = next((_exit_cause(code) for code in exit_codes if code), None) or _cause_in_text(text)
    return f"a data-loading worker process died ({cause}); {advice}"


def _exit_cause(code: int) -> str:
    if code > 0:
        return f"exit code {code}"
    number = -code
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    cause = f"killed by signal {number}, {name}"
    return cause + ", often out of memory" if number == signal.SIGKILL else cause


def _cause_in_text(text: str) -> str:
    """The cause torch's SIGCHLD handler writes ("exit code 1", "killed by signal: Killed.")."""
    exit_code = re.search(r"exit code (-?\d+)", text)
    if exit_code:
        return _exit_cause(int(exit_code.group(1)))
    killed = re.search(r"killed by signal: ([^.]+)", text)
    if killed:
        name = killed.group(1).strip()
        return f"killed by signal: {name}" + (", often out of memory" if name == "Killed" else "")
    return "cause unknown"


class Stopped(Exception):
    """The person asked to stop; unwinds set-up or the epoch in progress."""
