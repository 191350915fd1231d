"""Reading the small files a person can point anywhere (a project, a control file, the trust registry).

A named pipe where such a file was expected would block open() and read() forever, a device such
as /dev/zero would never end: each is opened without blocking, checked to be a regular file (the
opened file, not the name, so it cannot be swapped in between) and read up to a limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.errors import UserError

SMALL_FILE_LIMIT = 16 * 1024 * 1024  # far above any project or registry; far below a memory problem


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return ("a named pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device")


def read_small_file(path: str | os.PathLike, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of the regular file at `path`. OSError when it cannot be opened (missing,
    no permission); UserError in one line when it is no regular file or holds more than `limit` bytes."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file ({file_kind(info.st_mode)})")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)  # bounded: a file growing while read cannot exhaust memory
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UserError(f"{path} is larger than {limit:,} bytes; it cannot be what it should be")
    return data


def refuse_unless_regular(path: str | os.PathLike, what: str) -> None:
    """UserError in one line when `path` exists but is no regular file (a pipe, a device, a folder);
    a missing path is left to the caller."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} is not a regular file ({file_kind(mode)})")
