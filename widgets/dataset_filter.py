"""The Runs tab's dataset filter: "All datasets", then each dataset folder the listed runs trained on.

Entries are the folders' whole paths (as run.json recorded them), shown shortened: the folder's name,
with as many parent folders as it takes to tell two of the same name apart; the whole path is the
entry's tooltip. The choice is kept across refreshes of the list while its dataset is still listed.
"""

from __future__ import annotations

from pathlib import PurePath

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QComboBox

ALL_DATASETS = "All datasets"
UNKNOWN_DATASET = "unknown dataset"  # runs whose run.json names no dataset folder
NAME_WIDTH = 16  # characters: a long path must not make the tab wider than a 925 px window allows


def short_labels(roots: list[str]) -> dict[str, str]:
    """Each dataset root's label: its last folder, plus parents while another root ends the same way."""
    parts = {root: PurePath(root).parts for root in roots if root}
    labels = {}
    for root in roots:
        own = parts.get(root, ())
        depth = 1
        while depth < len(own) and any(other != root and theirs[-depth:] == own[-depth:]
                                       for other, theirs in parts.items()):
            depth += 1
        labels[root] = UNKNOWN_DATASET if not root else "/".join(own[-depth:]) if depth < len(own) else root
    return labels


class DatasetFilter(QComboBox):
    chosen_changed = Signal()  # which runs to list changed

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("runsDatasetFilter")
        self.setToolTip("List only the runs of one dataset folder.")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(NAME_WIDTH)
        self.addItem(ALL_DATASETS, None)
        self.currentIndexChanged.connect(self._on_index_changed)

    def chosen(self) -> str | None:
        """The dataset root whose runs are listed; None: every dataset's."""
        return self.currentData()

    def set_roots(self, roots: list[str]) -> dict[str, str]:
        """Offer these dataset roots (in this order); the chosen one stays chosen while it is offered.
        Returns the labels, for the list's Dataset column to say the same."""
        chosen, labels = self.chosen(), short_labels(roots)
        self.blockSignals(True)  # rebuilding is not a choice; chosen_changed says once if the choice went
        try:
            self.clear()
            self.addItem(ALL_DATASETS, None)
            for root in labels:
                self.addItem(labels[root], root)
                self.setItemData(self.count() - 1, root or "run.json names no dataset folder",
                                 Qt.ItemDataRole.ToolTipRole)
            index = self.findData(chosen) if chosen is not None else 0
            self.setCurrentIndex(max(index, 0))
        finally:
            self.blockSignals(False)
        if self.chosen() != chosen:
            self.chosen_changed.emit()
        return labels

    @Slot(int)
    def _on_index_changed(self, _index: int) -> None:
        self.chosen_changed.emit()
