"""What the commands write: their result on stdout, notes on stderr.

A result that cannot be written (a full device, a reader that left, stdout closed) ends the
command in one line with exit 1; a note that cannot be written is lost, never the work. --json
output is strict JSON: a non-finite number (a diverged loss) is written as null, not as NaN or
Infinity, which JSON readers other than Python's refuse.
"""

from __future__ import annotations

import errno
import json
import sys
from typing import Any

from engine.errors import OutputLost
from engine.json_values import finite_only


def note(text: str) -> None:
    """A line for the person on stderr, best effort."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # ValueError: the stream was closed
        pass


def print_result(text: str, what: str = "the result") -> None:
    """The command's result on stdout, flushed at once, so that a failed write is said here in one
    line and not as a traceback at exit."""
    try:
        if sys.stdout is None:  # started with stdout closed: print would drop the text without a word
            raise OSError(errno.EBADF, "standard output is closed")
        print(text, flush=True)
    except (OSError, ValueError) as exc:
        raise OutputLost(f"{what} could not be written to standard output: {stream_problem(exc)}") from None


def print_json(value: Any, what: str = "the result") -> None:
    """`value` as one line of strict JSON on stdout (see print_result)."""
    print_result(json.dumps(finite_only(value), allow_nan=False, default=str), what)


def stream_problem(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
