"""What the window says about a frozen trunk's BatchNorm statistics (--adapt-norm auto | on | off):
before a run, the setting; once a run has started, what it chose and by how much. Plain text from
plain engine data (the setting, engine.events.NormChoice), for the tree's summary line and tooltips."""

from __future__ import annotations

from engine.events import NormChoice

ADAPTED_TIP = " Eval mode: running statistics adapted to this data before training (AdaBN), then kept."
AUTO_TIP = (" Eval mode: running statistics as loaded, or adapted to this data before training (AdaBN) when that "
            "fits the head measurably better (auto, measured at Start), then kept.")
LOADED_TIP = " Eval mode: running statistics stay exactly as loaded."


def norm_summary(setting: str, choice: NormChoice | None) -> str:
    """The summary line's part, " · norm statistics …", or "" when there is nothing to say."""
    if choice is not None and choice.measured:
        kept = "adapted (AdaBN)" if choice.adapted else "as loaded"
        return f" · norm statistics {kept} (auto: adapted {choice.gain_points:+.1f} points)"
    if choice is not None:
        return " · norm statistics adapted to the data first (AdaBN)" if choice.adapted else ""
    if setting == "on":
        return " · norm statistics adapted to the data first (AdaBN)"
    if setting == "auto":
        return " · norm statistics: auto (as loaded or adapted, measured at Start)"
    return ""


def norm_tooltip(setting: str, choice: NormChoice | None) -> str:
    """How a frozen norm layer's running statistics are kept, for its Frozen cell's tooltip."""
    if choice is not None:
        return ADAPTED_TIP if choice.adapted else LOADED_TIP
    return {"on": ADAPTED_TIP, "auto": AUTO_TIP}.get(setting, LOADED_TIP)
