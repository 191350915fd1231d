"""Atomic file writing: a crash at any point leaves the previous file intact.

Write to a temporary file in the same folder, flush, fsync, `os.replace`, then fsync the folder.
No torch here: the config, the run folder and the launcher write through these too.

TRANSFER_STUDIO_NO_FSYNC=1 skips the fsyncs (never the rename): a killed process still leaves the old
file or the new one whole; only a power cut could lose the latest write. The test suite sets it: its
runs write ~25 GB of checkpoints that are deleted moments later, and forcing each to disk made the
suite's time follow the disk's speed.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _file_mode() -> int:
    # mkstemp creates files 0600; a saved checkpoint should get the usual permissions (umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextmanager
def atomic_file(path: Path):
    """Write through a temporary file in the same folder; on success fsync, rename over `path` and
    fsync the folder. A crash at any point leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            durable_fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def durable_fsync(fd: int) -> None:
    """os.fsync, unless TRANSFER_STUDIO_NO_FSYNC is set (see above)."""
    if os.environ.get("TRANSFER_STUDIO_NO_FSYNC", "") not in ("", "0"):
        return
    os.fsync(fd)


def _fsync_dir(folder: Path) -> None:
    if os.environ.get("TRANSFER_STUDIO_NO_FSYNC", "") not in ("", "0"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
