"""A run's name as people see it: a line of text kept in its run.json (`name`), or else its folder's name.

The folder itself is never renamed: its checkpoint, model card, TensorBoard logs, an MLflow run and the
person's own scripts may refer to it by its path. A name is one line (any run of white space, new lines
included, becomes one space), trimmed, at most MAX_NAME_LENGTH characters; an empty one means "the
folder's name" again. RunFolder.rename writes it; RunRecord.name reads it.
"""

from __future__ import annotations

from typing import Any

from engine.errors import UserError

MAX_NAME_LENGTH = 80  # a list cell, a legend entry and the status bar still show all of it


def one_line(text: str) -> str:
    return " ".join(text.split())


def clean_name(typed: str) -> str:
    """What the person typed as the name to keep ("" for none); UserError when it is too long."""
    name = one_line(typed)
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"a run's name is at most {MAX_NAME_LENGTH} characters; this one has {len(name)}")
    return name


def recorded_name(value: Any) -> str | None:
    """run.json's `name` as shown: a file edited by hand may hold anything, so what is not text reads as
    no name and a name too long is cut, never refused (the run is still listed)."""
    if not isinstance(value, str):
        return None
    return one_line(value)[:MAX_NAME_LENGTH] or None
