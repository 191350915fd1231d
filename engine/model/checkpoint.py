"""Checkpoints: saving in the background and safe loading.

A checkpoint is a versioned plain dict that `torch.load(path, weights_only=True)` reads:
"model" (a state dict with plain torchvision keys, and the module versions torch.save keeps), "arch",
"class_names", "preprocessing", "model_kwargs" (what `torchvision.models.get_model(arch, num_classes=K,
**model_kwargs)` needs to rebuild the model; absent from older checkpoints), "plan", "metrics",
"format_version". Loading never unpickles code.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import stat
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from engine.atomic import atomic_file
from engine.model.constructors import model_kwargs
from engine.data.images import INTERPOLATIONS
from engine.errors import RunFailed, UnsafeFileError, UserError

FORMAT_VERSION = 1
UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save straight into the temporary file: no second copy of a large checkpoint in memory.
    A failed write (full disk) is an OSError naming `path`."""
    try:
        with atomic_file(path) as fh:
            torch.save(obj, fh)
    except (OSError, RuntimeError) as exc:
        # torch's zip writer hides a failed write behind its own RuntimeError ("unexpected pos").
        failed = exc if isinstance(exc, OSError) else exc.__context__
        if not isinstance(failed, OSError):
            raise
        raise OSError(failed.errno, failed.strerror, str(path)) from None


def snapshot(obj: Any) -> Any:
    """A copy of nested dicts/lists with every tensor cloned to the CPU, safe to write from another
    thread while training goes on changing the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundSaver:
    """Writes files in order on one background thread, so disk I/O overlaps the next epoch.
    `wait()` before relying on a file being there. A write still waiting when a newer one of the same
    file comes is dropped: epochs on cached features take milliseconds, a 44 MB resume.pt far longer."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ts-save")
        self._pending: list[tuple[Future, Path]] = []

    def save(self, obj: Any, path: Path) -> None:
        self._raise_failed_writes()  # stop at the first failed save, not after every epoch has run
        for future, queued in self._pending:
            if queued == path:
                future.cancel()  # only a write not yet started cancels: one being written completes
        self._pending = [(f, p) for f, p in self._pending if not f.cancelled()]
        self._pending.append((self._pool.submit(atomic_torch_save, obj, path), path))

    def _raise_failed_writes(self) -> None:
        done = [f for f, _ in self._pending if f.done()]
        self._pending = [(f, p) for f, p in self._pending if not f.done()]
        for future in done:
            _raise_as_run_failure(future)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future, _ in pending:
            _raise_as_run_failure(future)  # a failed write is reported here, on the training thread

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _raise_as_run_failure(future) -> None:
    exc = future.exception()
    if isinstance(exc, OSError):
        raise RunFailed(f"could not save {exc.filename or 'a run file'}: {exc.strerror or exc}; the run is "
                        f"stopped and the last files written completely are kept") from None
    if exc is not None:
        raise exc


def safe_torch_load(path: Path) -> Any:
    """torch.load with weights_only=True, refusing when safe loading has been switched off.
    Whatever the file holds, a failure is one UserError line naming the file: "... is empty",
    "... is not a PyTorch file", "... is damaged or cut short", or UnsafeFileError for code."""
    if os.environ.get(UNSAFE_ENV, "").strip() not in ("", "0", "false", "False"):
        raise UnsafeFileError(f"refusing to load {path}: {UNSAFE_ENV} is set, which disables safe loading; unset it")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses a folder with a traceback
        os.close(fd)
        raise UserError(f"{path} is not a file (a folder)" if stat.S_ISDIR(info.st_mode) else
                        f"{path} is not a regular file (a pipe or a device)")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size == 0:
            raise UserError(f"{path} is empty")
        head = fh.read(4)
        fh.seek(0)
        # torch.save writes a zip archive; its legacy format is a pickle (protocol 2+ starts with 0x80).
        if head != b"PK\x03\x04" and head[:1] != b"\x80":
            raise UserError(f"{path} is not a PyTorch file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": not the person's concern
                return torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeFileError(f"refused {path}: it needs arbitrary code to load ({_first_line(exc, 160)})") from None
        except MemoryError:
            raise UserError(f"cannot read {path}: not enough memory") from None
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or _first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - a damaged file breaks the reader in many ways
            raise UserError(f"{path} is not a PyTorch file, or is damaged ({_first_line(exc)})") from None


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, or its type when the message is empty (EOFError())."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .pt/.pth (weights only), .safetensors, or one of our checkpoints."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"file not found: {path}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        verify_weights(obj, path)
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    check_state_dict(obj, path, "its contents")
    return obj


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: any changed byte
    of the weights (a bad disk, a broken copy, a hand edit) changes it."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_state_dict(state: Any, path: Path, what: str = "its weights") -> None:
    """A state dict is names -> dense tensors in memory; anything else is refused in one line."""
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} does not hold a state dict ({what} are {_kind(state)})")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path} does not hold a state dict ({what} hold {_kind(tensor)} under {name!r})")
        if tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized:
            kind = "a meta tensor (no data)" if tensor.is_meta else f"a {str(tensor.layout).replace('torch.', '')} tensor"
            raise UserError(f"{path}: {name} is {kind}; only dense tensors with their data can be loaded")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return f"a {type(value).__name__}"


def verify_weights(obj: dict, path: Path) -> None:
    """Refuse a checkpoint whose weights differ from the hash stored when it was saved (a checkpoint
    written before hashes existed has none, and loads as before)."""
    check_state_dict(obj["model"], path)
    stored = obj.get("weights_sha256")
    if stored is None:
        return
    if not isinstance(stored, str) or weights_hash(obj["model"]) != stored:
        raise UserError(f"{path} is corrupted: its weights do not match the hash stored at save time")


def make_checkpoint(model: torch.nn.Module, *, arch: str, class_names, preprocessing: dict, plan: dict,
                    metrics: dict, epoch: int, config: dict) -> dict[str, Any]:
    source = model.state_dict()
    # One copy each, already contiguous (a channels_last weight is not copied twice).
    state = OrderedDict((k, v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format))
                        for k, v in source.items())
    # Module versions, as torch.save(model.state_dict()) keeps them: plain torchvision's MNASNet refuses
    # a state dict without its version.
    if getattr(source, "_metadata", None) is not None:
        state._metadata = source._metadata
    return {
        "format_version": FORMAT_VERSION,
        "model": state,
        "weights_sha256": weights_hash(state),
        "arch": arch,
        "class_names": list(class_names),
        "preprocessing": preprocessing,
        "model_kwargs": model_kwargs(arch, int(preprocessing["crop"])),
        "plan": plan,
        "metrics": metrics,
        "epoch": epoch,
        "config": config,
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or "format_version" not in obj or "model" not in obj:
        raise UserError(f"{path} is not a Transfer Studio checkpoint")
    version = obj["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path} is not a valid checkpoint: format_version must be 1, 2, ..., got {version!r:.40}")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer Transfer Studio (format {version})")
    _check_fields(obj, path)
    verify_weights(obj, path)
    return obj


def _check_fields(obj: dict, path: Path) -> None:
    """The fields predict, export and the window read, each of its type: one line for the first
    that is missing or wrong, instead of a KeyError or TypeError deep inside them."""
    def bad(field: str, expected: str) -> UserError:
        value = _get(obj, field)
        shown = "missing" if value is None else f"got {_kind(value)}"
        return UserError(f"{path} is not a valid checkpoint: {field} must be {expected} ({shown})")

    if not isinstance(obj.get("arch"), str) or not obj["arch"]:
        raise bad("arch", "an architecture name")
    names = obj.get("class_names")
    # A regression's one output ("value") and a multi-label set of one label are a list of 1 name.
    task = obj.get("task")
    fewest = 1 if isinstance(task, dict) and task.get("name") in ("multi-label", "regression") else 2
    if not isinstance(names, (list, tuple)) or len(names) < fewest or not all(isinstance(n, str) for n in names):
        raise bad("class_names", f"a list of at least {fewest} names")
    prep = obj.get("preprocessing")
    if not isinstance(prep, dict):
        raise bad("preprocessing", "an object with resize, crop, mean and std")
    for key in ("resize", "crop"):
        value = prep.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65536:
            raise bad(f"preprocessing.{key}", "a size in pixels")
    for key in ("mean", "std"):
        value = prep.get(key)
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
                or (key == "std" and not all(v > 0 for v in value))):
            raise bad(f"preprocessing.{key}", "3 finite numbers" + (" above 0" if key == "std" else ""))
    if prep.get("interpolation") is not None and prep["interpolation"] not in INTERPOLATIONS:
        raise bad("preprocessing.interpolation", f"one of {', '.join(INTERPOLATIONS)}")
    for key in ("config", "plan", "metrics", "model_kwargs"):
        if key in obj and not isinstance(obj[key], dict):
            raise bad(key, "an object")


def _get(obj: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj
