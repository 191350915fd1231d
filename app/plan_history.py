"""Plan changes as undoable commands: presets, tree edits, the spin boxes, the LR finder and applied
advice all go through PlanChange, which stores only the fields it changed."""

from __future__ import annotations

from PySide6.QtGui import QUndoCommand

from engine.insight.advisor import Advice
from engine.config import PlanConfig


# Undo merges a burst of steps of one spin box (base LR, factor, interval) into one change.
MERGE_BASE_LR, MERGE_FACTOR, MERGE_GRADUAL_EVERY, MERGE_LAYER_DECAY = 1, 2, 3, 4


class PlanChange(QUndoCommand):
    """One undoable change of the plan, with the data and training fields that go with it (the
    advice's augmentation or epochs). Only the fields it names are put back: an undo never takes
    back an edit made elsewhere since."""

    def __init__(self, put, text: str, plan: tuple[PlanConfig, PlanConfig], data: tuple[dict, dict] = ({}, {}),
                 train: tuple[dict, dict] = ({}, {}), merge_key: int = -1):
        super().__init__(text)
        self._put, self._merge_key = put, merge_key
        self.plan, self.data, self.train = plan, data, train

    def redo(self) -> None:
        self._put(self.plan[1], self.data[1], self.train[1])

    def undo(self) -> None:
        self._put(self.plan[0], self.data[0], self.train[0])

    def id(self) -> int:  # noqa: A003 - Qt's name
        return self._merge_key

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt's name
        if other.id() != self._merge_key or other.data != ({}, {}) or other.train != ({}, {}):
            return False
        self.plan = (self.plan[0], other.plan[1])
        return True


def advice_changes(advice: Advice) -> tuple[dict, dict]:
    """The data and training fields the advice's flags set besides the plan (feature extraction's
    augmentation, gradual unfreezing's epochs)."""
    flags = dict(zip(advice.flags[::2], advice.flags[1::2]))
    data = {"augment": flags["--augment"]} if "--augment" in flags else {}
    train = {"epochs": int(flags["--epochs"])} if "--epochs" in flags else {}
    return data, train
