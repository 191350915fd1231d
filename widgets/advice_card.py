"""The advice card: the strategy the data suggests, why, and an Apply button.

A view over engine.insight.advisor.Advice (plain data). It never applies anything itself: Apply emits
`apply_requested` with the advice, and whoever owns the configuration applies it (undoably) and
calls `mark_applied`. So advice is never put over the person's own edits without their click.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from engine.insight.advisor import Advice

STRATEGY_NAMES = {"feature-extraction": "Feature extraction", "fine-tune": "Fine-tune all",
                  "discriminative": "Discriminative LRs", "gradual": "Gradual unfreezing", "layer-decay": "Layer decay"}
# The engine's advice names the command line's flags; the window names its own controls instead.
CONTROL_NAMES = {"strategy": "Strategy", "base-lr": "Base LR", "augment": "Augment", "epochs": "Epochs",
                 "discriminative-factor": "LR factor ÷", "gradual-every": "Unfreeze every (epochs)"}
FLAG = re.compile(r"--([a-z][a-z-]*)")


def in_window_words(text: str) -> str:
    """`text` with each command-line flag named as the window's control that sets it."""
    return FLAG.sub(lambda match: CONTROL_NAMES.get(match.group(1), match.group(1).replace("-", " ")), text)


def settings_line(flags: tuple[str, ...]) -> str:
    """What Apply sets, in the controls' words: ("--strategy", "gradual", "--epochs", "7") ->
    "Apply sets: Strategy Gradual unfreezing · Epochs 7"."""
    pairs = zip(flags[::2], flags[1::2])
    parts = [f"{in_window_words(flag)} {STRATEGY_NAMES.get(value, value)}" for flag, value in pairs]
    return "Apply sets: " + " · ".join(parts)


class AdviceCard(QFrame):
    apply_requested = Signal(object)  # Advice

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("adviceCard")
        self.setFrameShape(QFrame.StyledPanel)
        self.advice: Advice | None = None
        self.title = QLabel("Advice appears after the dataset is scanned.")
        self.title.setObjectName("adviceTitle")
        self.reasons = QLabel()
        self.reasons.setObjectName("adviceReasons")
        self.reasons.setWordWrap(True)
        self.reasons.setTextFormat(Qt.PlainText)
        self.note = QLabel()  # e.g. that the presets followed the advice, and how to take that back
        self.note.setObjectName("adviceNote")
        self.note.setStyleSheet("color: #2e7d32;")
        self.note.setWordWrap(True)
        self.note.hide()
        self.apply_button = QPushButton("Apply")
        self.apply_button.setObjectName("adviceApplyButton")
        self.apply_button.setToolTip("Set the strategy and LRs the advice names (Undo takes it back)")
        self.apply_button.setEnabled(False)
        self.apply_button.clicked.connect(self._apply)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.apply_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addLayout(top)
        layout.addWidget(self.reasons)
        layout.addWidget(self.note)

    def show_pending(self, text: str = "Measuring the backbone on the images...") -> None:
        self.advice = None
        self.show_note("")
        self.title.setText(text)
        self.reasons.clear()
        self.apply_button.setEnabled(False)

    def show_failure(self, message: str) -> None:
        self.advice = None
        self.title.setText("No advice")
        self.reasons.setText(message)
        self.apply_button.setEnabled(False)

    def show_advice(self, advice: Advice, applied: bool = False) -> None:
        self.advice = advice
        self.title.setText(f"Advice: {STRATEGY_NAMES.get(advice.strategy, advice.strategy)}")
        # Plain text: a rich-text label re-lays its document out on every height-for-width query,
        # and the panel's scroll area asks many (40 ms of GUI time after each scan).
        items = "\n".join(f"• {in_window_words(reason)}" for reason in advice.reasons)
        self.reasons.setText(f"{items}\n{settings_line(advice.flags)}")
        self.mark_applied(applied)

    def mark_applied(self, applied: bool) -> None:
        """Applied: the button rests (the configuration is the advice's); edits re-enable it."""
        self.apply_button.setEnabled(self.advice is not None and not applied)
        self.apply_button.setText("Applied" if applied and self.advice is not None else "Apply")
        if not applied:
            self.show_note("")  # a note that the presets follow the advice no longer holds

    def show_note(self, text: str) -> None:
        self.note.setText(text)
        self.note.setVisible(bool(text))

    def _apply(self) -> None:
        if self.advice is not None:
            self.apply_requested.emit(self.advice)
