"""Which .pt2 files this installation may load: the SHA-256 of every one it exported.

Loading a torch.export file (.pt2) unpickles, and unpickling can run any code the file's author
put there. So a .pt2 loads only if this installation wrote exactly those bytes (its SHA-256 is in
the registry, recorded at export time) or the person says they trust it (`predict --trust`).

The registry is a small JSON file beside the project's other per-user files (engine.paths):
$TRANSFER_STUDIO_TRUST_FILE, else <cache dir>/trusted-exports.json. Losing it only means
exported files need --trust again: it errs on the safe side.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from engine.atomic import atomic_write_bytes
from engine.errors import UserError
from engine.paths import cache_dir
from engine.small_files import read_small_file

REGISTRY_VERSION = 1
TRUST_FILE_ENV = "TRANSFER_STUDIO_TRUST_FILE"


class UntrustedFileError(UserError):
    """A file that would unpickle on load, and that this installation did not write."""


def registry_path() -> Path:
    explicit = os.environ.get(TRUST_FILE_ENV)
    return Path(explicit) if explicit else cache_dir() / "trusted-exports.json"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded_digests() -> dict[str, dict]:
    """digest -> {path, recorded}; an unreadable or damaged registry trusts nothing. A registry that
    is no regular file (a pipe would block, a device never end) is refused in one line."""
    try:
        content = json.loads(read_small_file(registry_path()))
        files = content["files"]
    except UserError as exc:
        raise UserError(f"trust registry {exc}") from None
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def record_export(data: bytes, path: Path) -> str:
    """Remember that this installation wrote `data` (the bytes of the file at `path`)."""
    digest = sha256_of(data)
    target = registry_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _registry_lock(target):  # two exports at once must not drop each other's record
            files = recorded_digests()
            files[digest] = {"path": str(Path(path).resolve()), "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
            text = json.dumps({"format_version": REGISTRY_VERSION, "files": files}, indent=1) + "\n"
            atomic_write_bytes(target, text.encode())
    except OSError as exc:
        raise UserError(f"cannot record the exported file in {target}: {exc.strerror or exc}") from None
    return digest


def check_trusted(data: bytes, path: Path, trust: bool) -> None:
    """Refuse `data` (read from `path`) unless it was recorded at export time or `trust` is given."""
    if trust or sha256_of(data) in recorded_digests():
        return
    raise UntrustedFileError(
        f"{path} was not exported by this installation (its SHA-256 is not in {registry_path()}), and "
        f"loading a .pt2 file unpickles, which can run code; if you trust its source: transfer-studio predict --trust")


@contextlib.contextmanager
def _registry_lock(target: Path):
    """An exclusive lock on a file beside the registry (POSIX); elsewhere, no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(target.with_name(target.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
