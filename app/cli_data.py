"""Sub-commands that mend a dataset: suspects, relabel, exclude, undo.

Registered by app.cli: add_commands(sub, number) adds the parsers, HANDLERS maps a command to its
function (args -> exit code). `number(key)` is the argparse type checked by engine.config.NUMBER_RULES.
"""

from __future__ import annotations

HANDLERS: dict = {}


def add_commands(sub, number) -> None:
    """Adds this module's sub-parsers to `sub`."""
