"""Project files read back: a RunConfig that is valid as a whole, the architecture included.

The config itself (engine.config) knows ranges and fields; whether an architecture exists and
takes the image size is the model zoo's to say, so reading a project file lives here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.config import PROJECT_FORMAT_VERSION, RunConfig, shown_value
from engine.errors import UserError
from engine.model.architectures import check_arch, check_image_size
from engine.small_files import read_small_file


def validate_project(config: RunConfig) -> None:
    """Everything a project file can get wrong without training: ranges and the architecture.
    Raise UserError naming the first problem."""
    config.validate()
    check_arch(config.model.arch)
    check_image_size(config.model.arch, config.data.image_size)


def load_project(path: str | os.PathLike) -> RunConfig:
    """A fully valid RunConfig (see validate_project), or UserError in one line that names the
    file and the field: a window can apply the result all or nothing."""
    name = Path(path).name
    try:
        raw = json.loads(read_small_file(path))  # never blocks on a pipe, never reads a device without end
    except FileNotFoundError:
        raise UserError(f"project file not found: {path}") from None
    except UserError as exc:  # a pipe, a device, an enormous file
        raise UserError(f"project file {exc}") from None
    except RecursionError:  # json's decoder recurses once per bracket
        raise UserError(f"cannot read project file {path}: nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read project file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a Transfer Studio project file")
    version = raw.pop("transfer_studio_project", None)
    if version is None:
        raise UserError(f"{path} is not a Transfer Studio project file")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{name}: transfer_studio_project must be a format version (1, 2, ...), got {shown_value(version)}")
    if version > PROJECT_FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer Transfer Studio (format {version})")
    try:
        config = RunConfig.from_dict(raw)
        validate_project(config)
    except UserError as exc:
        raise UserError(f"{name}: {exc}") from None
    return config
