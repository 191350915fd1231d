"""The plan: presets, the LR settings, the layer tree's edits and the LR finder's scaling, each an
undoable PlanChange (app/plan_history.py) on the window's one history, which moves of the dataset's
files share: Ctrl+Z takes back the last thing done, whichever it was."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QUndoStack

from app.data_edit_session import BUSY as DATA_EDIT_BUSY, DataEdits
from app.plan_history import MERGE_BASE_LR, MERGE_FACTOR, MERGE_GRADUAL_EVERY, MERGE_LAYER_DECAY, PlanChange
from app.session_state import Configuration, Messages, ShownRun
from engine.config import PlanConfig


class PlanController(QObject):
    edited = Signal()  # the plan (and what went with it) changed: advice and planned LRs follow

    def __init__(self, configuration: Configuration, shown_run: ShownRun, messages: Messages, history: QUndoStack,
                 data_edits: DataEdits, parent=None):
        super().__init__(parent)
        self._configuration, self._shown_run, self._messages = configuration, shown_run, messages
        self.history = history
        self._data_edits = data_edits
        self._persons = False  # the person chose the plan: advice never replaces it by itself

    @property
    def is_persons(self) -> bool:
        return self._persons

    def begin(self, persons: bool) -> None:
        """Another configuration is shown: undo does not reach into the one before; `persons` says
        whether its plan is the person's (a project's, a run's) or the window's defaults."""
        self.history.clear()
        self._persons = persons

    @Slot(str)
    def apply_preset(self, strategy: str) -> None:
        """A strategy preset replaces the person's tree edits; the base LR follows the preset's default
        unless the person set their own."""
        self._persons = True  # the person chose a strategy, even the one shown: advice does not overrule it
        self._edit(replace(self._configuration.plan.with_strategy(strategy), edits=()), f"Preset {strategy}")

    @Slot(float)
    def set_base_lr(self, lr: float) -> None:
        self._edit(replace(self._configuration.plan, base_lr=lr), "Base LR", MERGE_BASE_LR)

    @Slot(float)
    def set_discriminative_factor(self, factor: float) -> None:
        self._edit(replace(self._configuration.plan, discriminative_factor=factor), "Discriminative factor",
                   MERGE_FACTOR)

    @Slot(int)
    def set_layer_decay(self, decay: float) -> None:
        self._edit(replace(self._configuration.plan, layer_decay=decay), "Layer decay", MERGE_LAYER_DECAY)

    def set_gradual_every(self, epochs: int) -> None:
        self._edit(replace(self._configuration.plan, gradual_every=epochs), "Gradual interval", MERGE_GRADUAL_EVERY)

    @Slot(object)
    def adopt_plan(self, plan: PlanConfig) -> None:
        """An edit made in the layer tree (a Frozen box, an LR cell), already checked by the engine."""
        self._edit(plan, "Layer tree edit")

    @Slot(object)
    def adopt_scaled_plan(self, plan: PlanConfig) -> None:
        """The LR finder's plan: every LR times one multiplier."""
        self._edit(plan, "LR finder")

    def change_with_settings(self, text: str, plan: PlanConfig, data: dict, train: dict) -> None:
        """One undoable change of the plan with the data and training fields that go with it (the
        advice's augmentation or epochs)."""
        draft = self._configuration
        before = ({k: getattr(draft.data, k) for k in data}, {k: getattr(draft.train, k) for k in train})
        self.history.push(PlanChange(self._put, text, (draft.plan, plan), (before[0], data), (before[1], train)))

    def _edit(self, plan: PlanConfig, text: str, merge_key: int = -1) -> None:
        if plan == self._configuration.plan:
            return
        if self._shown_run.refused("change the plan"):
            self._configuration.announce_plan()  # puts the tree back to what trains
            return
        self._persons = True
        self.history.push(PlanChange(self._put, text, (self._configuration.plan, plan), merge_key=merge_key))

    def _put(self, plan: PlanConfig, data: dict, train: dict) -> None:
        """What a PlanChange does and undoes: the plan, and the data and training fields it names."""
        configuration = self._configuration
        if data:
            configuration.set_data(replace(configuration.data, **data))
        if train:
            configuration.set_train(replace(configuration.train, **train))
        configuration.set_plan(plan)
        self.edited.emit()

    @Slot()
    def undo(self) -> None:
        if not self._shown_run.refused("undo") and not self._refused_while_editing_files():
            self.history.undo()

    @Slot()
    def redo(self) -> None:
        if not self._shown_run.refused("redo") and not self._refused_while_editing_files():
            self.history.redo()

    def _refused_while_editing_files(self) -> bool:
        if self._data_edits.busy:
            self._messages.notice.emit(DATA_EDIT_BUSY)
            return True
        return False
