"""The layer tree model: Qt's model contract, cascading checkboxes, LR edits, the summary line."""

import pytest
from PySide6.QtCore import Qt

from engine.config import PlanConfig
from engine.models import build_model
from engine.plan import build_plan, describe_plan
from widgets.layer_tree import FROZEN, HEADERS, LR, LayerTreeModel, ScientificSpinBox

CHECK = Qt.ItemDataRole.CheckStateRole


@pytest.fixture
def tree():
    model = LayerTreeModel()
    model.set_model_info(build_model("resnet18", 10, "none").info, PlanConfig(strategy="feature-extraction"))
    return model


def test_model_contract_and_headers(qtmodeltester, tree):
    qtmodeltester.check(tree, force_py=True)
    assert [tree.headerData(i, Qt.Orientation.Horizontal) for i in range(5)] == ["Layer", "Type", "Params", "Frozen", "LR"]
    assert HEADERS == ("Layer", "Type", "Params", "Frozen", "LR")
    assert tree.summary() == "Trainable 5,130 / 11,181,642 (0.05 %) · 1 LR group"


def test_checking_cascades_and_matches_the_engine_plan(qtmodeltester, tree):
    root = tree.index_for("", FROZEN)
    assert root.data(CHECK) == Qt.CheckState.PartiallyChecked  # only fc trains
    assert tree.setData(tree.index_for("layer4", FROZEN), Qt.CheckState.Unchecked.value, CHECK)
    assert tree.index_for("layer4.1.bn2", FROZEN).data(CHECK) == Qt.CheckState.Unchecked
    assert tree.setData(tree.index_for("layer4.0", FROZEN), Qt.CheckState.Checked.value, CHECK)
    assert tree.index_for("layer4", FROZEN).data(CHECK) == Qt.CheckState.PartiallyChecked
    assert tree.index_for("layer4.0.conv1", FROZEN).data(CHECK) == Qt.CheckState.Checked
    # What the tree shows is what the engine builds from the same config.
    engine_report = describe_plan(tree.model_info, build_plan(tree.plan_config, tree.model_info))
    trainable = {p["name"] for p in engine_report["parameters"] if p["trainable"]}
    assert trainable == {n for n in trainable if n.startswith(("fc.", "layer4.1."))} and "fc.weight" in trainable
    assert tree.summary().startswith(f"Trainable {engine_report['trainable_params']:,} ")
    # Checking the root freezes the whole subtree, including the head.
    assert tree.setData(root, Qt.CheckState.Checked.value, CHECK)
    assert tree.report["trainable_params"] == 0
    tree.setData(root, Qt.CheckState.Unchecked.value, CHECK)
    assert tree.report["trainable_params"] == tree.report["total_params"]
    qtmodeltester.check(tree, force_py=True)


def test_editing_an_lr_cell_changes_that_modules_effective_lr(tree, qtbot):
    cell = tree.index_for("layer3", LR)
    assert cell.data(Qt.ItemDataRole.FontRole).italic()  # inherited
    with qtbot.waitSignal(tree.dataChanged):
        assert tree.setData(cell, 2e-4, Qt.ItemDataRole.EditRole)
    assert tree.index_for("layer3.1.conv2", LR).data(Qt.ItemDataRole.EditRole) == 2e-4
    assert tree.index_for("layer3", LR).data() == "2.0e-04"
    assert tree.index_for("layer3", LR).data(Qt.ItemDataRole.FontRole) is None  # set here, not inherited
    assert not tree.setData(cell, -1.0, Qt.ItemDataRole.EditRole)
    tree.setData(cell, None, Qt.ItemDataRole.EditRole)  # back to inherited
    assert tree.index_for("layer3.1.conv2", LR).data(Qt.ItemDataRole.EditRole) == 1e-3


def test_lr_spin_box_reads_scientific_and_steps_1_2_5(qtbot):
    box = ScientificSpinBox()
    qtbot.addWidget(box)
    box.setValue(1e-3)
    assert box.text() == "1.0e-03"
    box.stepBy(1)
    assert box.value() == pytest.approx(2e-3)
    box.stepBy(2)
    assert box.value() == pytest.approx(1e-2)
    box.stepBy(-3)
    assert box.value() == pytest.approx(1e-3)
    assert box.valueFromText("5e-5") == 5e-5
