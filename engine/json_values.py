"""Typed reads of values parsed from JSON files that anyone may have damaged or edited by hand.

Each function gives the value as the type asked for, or None when it is another type: a reader
treats a field of the wrong type as missing, never as a reason for a traceback. JSON's true and
false are Python ints, so a number is never a bool here.
"""

from __future__ import annotations

import math
from typing import Any


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number(value: Any) -> float | None:
    """An int or a float, as a float (non-finite ones included: a diverged loss is recorded as NaN)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def mapping(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a list (other items left out); [] when it is not a list."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def texts(value: Any) -> tuple[str, ...] | None:
    """A list of strings; None when it is not a list or any item is not a string."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return tuple(value)


def numbers_by_name(value: Any, allow_null: bool = False) -> dict[str, float | None] | None:
    """{name: number} (with allow_null, a null stays None: a class without validation images)."""
    if not isinstance(value, dict):
        return None
    found = {}
    for name, item in value.items():
        if item is None and allow_null:
            found[name] = None
        elif number(item) is None:
            return None
        else:
            found[name] = number(item)
    return found


def finite_only(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf) in its dicts, lists and tuples made None:
    what strict JSON can hold (json.dumps(..., allow_nan=False) refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_only(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_only(item) for item in value]
    return value
