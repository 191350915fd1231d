#!/usr/bin/env python3
"""The longest GUI-thread stall when training evidence reaches a big, fully expanded layer tree:
update ratios (twice a second during training) and integrity reports (once an epoch), three epochs.

    .venv/bin/python bench/gui_stall_evidence.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.argv = ["x"]
import bench.gui_stall_tree as b
from PySide6.QtWidgets import QApplication
app = QApplication([])
from widgets.layer_tree import LayerTreeModel
from engine.events import IntegrityReport, LayerStats
for arch in ["resnet152", "efficientnet_b0", "convnext_tiny"]:
    m = LayerTreeModel(); v = b.tree_view(arch, (1000, 800), m)
    names = [l.name for l in m.model_info.layers if l.name and l.name.count(".") <= 1]
    tensors = [p for p, _, _ in m.model_info.parameter_modules]
    out = {}
    for epoch in (1, 2, 3):
        stats = {n: LayerStats(0.1 * epoch, 1e-3 * epoch, 0.0) for n in names}
        out.setdefault("layer stats", []).append(b.longest_stall(lambda: m.set_layer_stats(stats))[0])
        out.setdefault("integrity intact", []).append(b.longest_stall(lambda: m.set_integrity(IntegrityReport(epoch, len(tensors))))[0])
    out["integrity changed"] = [b.longest_stall(lambda: m.set_integrity(IntegrityReport(4, len(tensors), tuple(tensors[:20]))))[0]]
    print(arch, out)
    v.close()
