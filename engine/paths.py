"""Where Transfer Studio keeps files that can be made again: the demo dataset, cached features."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$TRANSFER_STUDIO_CACHE, else $XDG_CACHE_HOME/transfer-studio, else ~/.cache/transfer-studio."""
    explicit = os.environ.get("TRANSFER_STUDIO_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "transfer-studio"
