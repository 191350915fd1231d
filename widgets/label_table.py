"""The per-label figures of a multi-label run: precision, recall, F1, AP, threshold and support,
as evaluate gives them (the per-class table's columns, plus AP and the tuned threshold)."""

from __future__ import annotations

from widgets.confusion import PerClassModel

LABEL_TABLE_TIP = ("Per label, at its threshold (tuned on the validation images for the highest F1). Precision: of "
                   "the images it was predicted on, the share that have it. Recall: of the images that have it, the "
                   "share found. AP: average precision over every threshold (— without an image that has it). "
                   "Support: the images that have it.")


class PerLabelModel(PerClassModel):
    HEADERS = ("Label", "Precision", "Recall", "F1", "AP", "Threshold", "Support")
    KEYS = ("precision", "recall", "f1", "ap", "threshold", "support")
