"""Byte-identical image files in a dataset: the same image in training and validation inflates the
validation accuracy (a set with copies across its split read 84.9 %), so a scan warns of them.

Files are grouped by size first (one stat each); only files sharing a size are hashed, so a folder of
photos, whose sizes almost never collide, costs no extra reads."""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable

CHUNK = 1 << 20


def identical_files(paths: Iterable[str], should_stop: Callable[[], bool] = lambda: False) -> tuple[tuple[str, ...], ...]:
    """Groups (two files or more, in the given order) of files with the same bytes."""
    by_size: dict[int, list[str]] = {}
    for path in paths:
        try:
            by_size.setdefault(os.stat(path).st_size, []).append(path)
        except OSError:
            continue  # gone since it was probed: the loader reports it if it matters
    groups: list[tuple[str, ...]] = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, list[str]] = {}
        for path in same_size:
            if should_stop():
                return tuple(groups)
            digest = _digest(path)
            if digest is not None:
                by_digest.setdefault(digest, []).append(path)
        groups += [tuple(group) for group in by_digest.values() if len(group) > 1]
    return tuple(groups)


def _digest(path: str) -> str | None:
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                sha.update(chunk)
    except OSError:
        return None
    return sha.hexdigest()


def copies_across(groups: Iterable[tuple[str, ...]], train: Iterable[str], val: Iterable[str]) -> list[tuple[str, str]]:
    """(validation file, a training file with the same bytes) for every validation file that has one."""
    train_set, val_set = set(train), set(val)
    pairs = []
    for group in groups:
        in_train = [p for p in group if p in train_set]
        if in_train:
            pairs += [(p, in_train[0]) for p in group if p in val_set]
    return pairs
