"""The layer tree: Qt's model contract, cascading checkboxes, LR edits, the summary line, change
notification that stays small on big trees, the filter and the training evidence."""

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QStyleOptionViewItem

from engine.config import PlanConfig, PlanEdit
from engine.events import IntegrityReport, LayerStats
from engine.model.architectures import build_model
from engine.plan.plan import build_plan, describe_plan
from widgets.layer_tree import (FROZEN, HEADERS, HEALTH, LR, NAME_ROLE, PARAMS, RATIO, LayerFilterEdit, LayerTreeModel,
                                LayerTreeView, LrDelegate, LrEditor, ScientificSpinBox, format_lr, ratio_health)

CHECK = Qt.ItemDataRole.CheckStateRole
EDIT = Qt.ItemDataRole.EditRole
TIP = Qt.ItemDataRole.ToolTipRole


@pytest.fixture(scope="module")
def resnet18_info():
    return build_model("resnet18", 10, "none").info


@pytest.fixture
def tree(resnet18_info):
    model = LayerTreeModel()
    model.set_model_info(resnet18_info, PlanConfig(strategy="feature-extraction"))
    return model


@pytest.fixture
def fine_tune_tree(resnet18_info):
    model = LayerTreeModel()
    model.set_model_info(resnet18_info, PlanConfig(strategy="fine-tune"))
    return model


def record_changed_cells(model: LayerTreeModel) -> list[tuple[str, int]]:
    """(module name, column) of every cell inside the dataChanged ranges emitted from now on."""
    cells = []

    def on_changed(top_left, bottom_right, roles=()):
        assert top_left.parent() == bottom_right.parent()
        for row in range(top_left.row(), bottom_right.row() + 1):
            name = model.index(row, 0, top_left.parent()).data(NAME_ROLE)
            cells.extend((name, col) for col in range(top_left.column(), bottom_right.column() + 1))

    model.dataChanged.connect(on_changed)
    return cells


def test_model_contract_and_headers(qtmodeltester, tree):
    qtmodeltester.check(tree, force_py=True)
    assert [tree.headerData(i, Qt.Orientation.Horizontal) for i in range(6)] == list(HEADERS)
    assert HEADERS == ("Layer", "Type", "Params", "Frozen", "LR", "Update ratio")
    assert tree.summary() == ("Trainable 5,130 / 11,181,642 (0.05 %) · 1 LR group · norm statistics: auto (as loaded "
                              "or adapted, measured at Start)")  # the trunk and its BatchNorm layers are frozen
    tree.set_adapt_norm("off")
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
        assert tree.setData(cell, 2e-4, EDIT)
    assert tree.index_for("layer3.1.conv2", LR).data(EDIT) == 2e-4
    assert tree.index_for("layer3", LR).data() == "2.0e-04"
    assert tree.index_for("layer3", LR).data(Qt.ItemDataRole.FontRole) is None  # set here, not inherited
    assert not tree.setData(cell, -1.0, EDIT)
    tree.setData(cell, None, EDIT)  # back to inherited
    assert tree.index_for("layer3.1.conv2", LR).data(EDIT) == 1e-3


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


def test_lr_spin_box_keeps_the_digits_typed(qtbot):
    box = ScientificSpinBox()
    qtbot.addWidget(box)
    box.setValue(1.25e-4)
    assert box.text() == "1.25e-04"
    box.lineEdit().setText("3.475e-5")
    box.interpretText()
    assert box.value() == 3.475e-5 and box.text() == "3.475e-05"
    box.interpretText()  # reading the shown text back changes nothing
    assert box.value() == 3.475e-5
    assert format_lr(1e-3 / 2.6) == "3.846e-04"  # a computed LR shows 4 digits in the cell


def lr_editor(view: LayerTreeView, index) -> tuple[LrDelegate, LrEditor]:
    delegate = view.itemDelegateForColumn(LR)
    editor = delegate.createEditor(view.viewport(), QStyleOptionViewItem(), index)
    delegate.setEditorData(editor, index)
    return delegate, editor


def test_the_lr_editor_commits_what_was_typed_and_only_when_edited(qtbot, tree):
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(tree)
    cell = tree.index_for("layer3", LR)
    delegate, editor = lr_editor(view, cell)
    delegate.setModelData(editor, tree, cell)  # opened and closed without typing
    assert tree.module_row("layer3")["lr_inherited"]
    delegate, editor = lr_editor(view, cell)
    editor.lineEdit().selectAll()
    QTest.keyClicks(editor.lineEdit(), "1.25e-4")
    delegate.setModelData(editor, tree, cell)
    assert tree.index_for("layer3.0.conv1", LR).data(EDIT) == 1.25e-4
    assert tree.index_for("layer3", LR).data() == "1.25e-04"
    delegate, editor = lr_editor(view, cell)
    editor.stepBy(1)  # arrow keys enter a value too
    delegate.setModelData(editor, tree, cell)
    assert tree.index_for("layer3", LR).data(EDIT) == pytest.approx(2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("text, reason", [("abc", "not a number"), ("0", "out of range"), ("50", "out of range"),
                                          ("-1e-3", "out of range"), ("inf", "not a learning rate")])
def test_refused_lr_input_says_why_and_the_valid_range(qtbot, tree, text, reason):
    cell = tree.index_for("layer3", LR)
    with qtbot.waitSignal(tree.edit_refused) as refused:
        assert not tree.setData(cell, text, EDIT)
    assert reason in refused.args[0] and "between 1e-08 and 10" in refused.args[0]
    assert tree.module_row("layer3")["lr_inherited"]


def test_the_lr_editor_explains_bad_input_while_typing_and_on_enter(qtbot, tree):
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(tree)
    view.show()
    qtbot.waitExposed(view)
    cell = tree.index_for("layer3", LR)
    view.setCurrentIndex(cell)
    view.edit(cell)
    editor = view.findChild(LrEditor)
    assert editor is not None
    editor.lineEdit().selectAll()
    QTest.keyClicks(editor.lineEdit(), "abc")
    assert "not a number" in editor.toolTip()
    with qtbot.waitSignal(tree.edit_refused) as refused:
        QTest.keyClick(editor.lineEdit(), Qt.Key.Key_Return)
    assert "'abc' is not a number" in refused.args[0]


def test_the_roots_lr_is_the_base_lr_and_keeps_lrs_set_below(qtbot, fine_tune_tree):
    tree = fine_tune_tree
    assert tree.setData(tree.index_for("layer3", LR), 2e-4, EDIT)
    with qtbot.waitSignal(tree.base_lr_changed) as changed:
        assert tree.setData(tree.index_for("", LR), "5e-4", EDIT)
    assert changed.args == [5e-4] and tree.base_lr() == tree.plan_config.base_lr == 5e-4
    assert tree.index_for("layer3.1.conv1", LR).data(EDIT) == 2e-4  # kept
    assert tree.index_for("layer1.0.conv1", LR).data(EDIT) == 5e-4
    assert not any(e.module == "" and e.lr is not None for e in tree.plan_config.edits)
    assert tree.set_base_lr(2e-3) and tree.index_for("", LR).data(EDIT) == 2e-3
    assert tree.apply_edit(PlanEdit("", lr=7e-4)) and tree.base_lr() == tree.plan_config.base_lr == 7e-4
    assert tree.index_for("layer3", LR).data(EDIT) == 2e-4
    with qtbot.waitSignal(tree.edit_refused):
        assert not tree.set_base_lr(0.0)


def test_modules_without_parameters_have_no_checkbox(tree):
    for name in ("relu", "maxpool", "avgpool", "layer1.0.relu"):
        cell = tree.index_for(name, FROZEN)
        assert not tree.flags(cell) & Qt.ItemFlag.ItemIsUserCheckable
        assert cell.data(CHECK) is None
        assert not tree.setData(cell, Qt.CheckState.Unchecked.value, CHECK)
        assert "no parameters" in cell.data(TIP)
    assert tree.flags(tree.index_for("bn1", FROZEN)) & Qt.ItemFlag.ItemIsUserCheckable


def test_the_summary_of_a_gradual_plan_names_its_phases(tree):
    tree.set_plan_config(PlanConfig(strategy="gradual"))
    assert tree.summary() == ("Trainable 5,130 / 11,181,642 (0.05 %) now; all from epoch 6 "
                              "(gradual, one more stage every epoch) · 1 LR group now")


# --- change notification: only what changed ---------------------------------------------------


def test_a_weight_decay_change_repaints_nothing(tree):
    cells = record_changed_cells(tree)
    tree.set_weight_decay(0.05)
    assert cells == []
    assert {g["weight_decay"] for g in tree.report["param_groups"]} == {0.05}


def test_a_frozen_click_on_a_leaf_changes_only_that_leaf_and_its_ancestors(fine_tune_tree):
    tree = fine_tune_tree
    cells = record_changed_cells(tree)
    assert tree.setData(tree.index_for("layer4.0.conv1", FROZEN), Qt.CheckState.Checked.value, CHECK)
    assert {name for name, _ in cells} == {"layer4.0.conv1", "layer4.0", "layer4", ""}
    assert 0 not in {col for _, col in cells}  # the Layer column never changes


def test_a_base_lr_change_repaints_only_the_lr_cells_that_show_it(fine_tune_tree):
    tree = fine_tune_tree
    for stage in tree.model_info.stages:
        tree.apply_edit(PlanEdit(stage, lr=1e-4))
    showing_base = {row["name"] for row in tree.report["modules"] if row["lr_inherited"] and row["lr"] == 1e-3}
    cells = record_changed_cells(tree)
    tree.set_base_lr(3e-3)
    assert {col for _, col in cells} == {LR}
    assert {name for name, _ in cells} == showing_base | {""}
    cells.clear()
    tree.set_base_lr(3e-3)  # no change, no signal
    assert cells == []


class CountingModel(LayerTreeModel):
    def __init__(self):
        super().__init__()
        self.data_calls = 0
        self.asked: set[str] = set()  # modules whose cells were asked for, e.g. to paint them

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        self.data_calls += 1
        self.asked.add(self.module_row_name(index))
        return super().data(index, role)

    def module_row_name(self, index) -> str:
        return super().data(index.siblingAtColumn(0), NAME_ROLE)


def test_edits_on_a_big_expanded_tree_ask_the_model_for_visible_rows_only(qtbot):
    model = CountingModel()
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(model)
    view.resize(800, 600)
    model.set_model_info(build_model("resnet50", 10, "none").info, PlanConfig(strategy="feature-extraction"))
    view.show()
    view.expandAll()
    qtbot.waitExposed(view)

    def data_calls_of(edit) -> int:
        QApplication.processEvents()
        model.data_calls = 0
        edit()
        QApplication.processEvents()
        return model.data_calls

    assert data_calls_of(lambda: model.set_weight_decay(0.05)) == 0
    leaf = lambda: model.setData(model.index_for("layer4.2.conv3", FROZEN), Qt.CheckState.Unchecked.value, CHECK)  # noqa: E731
    assert data_calls_of(leaf) < 300  # one offscreen leaf: its visible ancestors repaint
    # A preset changes every row: only the rows on screen are asked, not the 200-odd expanded ones.
    every_row = data_calls_of(lambda: model.set_plan_config(PlanConfig(strategy="fine-tune")))
    assert 0 < every_row < 20 * len(HEADERS) * 40
    # That many ranges in one turn repainted the whole viewport; the next turn is precise again.
    back = lambda: model.setData(model.index_for("layer4.2.conv3", FROZEN), Qt.CheckState.Checked.value, CHECK)  # noqa: E731
    assert 0 < data_calls_of(back) < 300


# --- the filter ---------------------------------------------------------------------------------


def test_the_filter_shows_matches_their_ancestors_and_descendants(qtbot, tree, resnet18_info):
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(tree)
    edit = LayerFilterEdit(view)
    qtbot.addWidget(edit)
    assert edit.objectName() == "layerFilter"

    def hidden(name):
        index = tree.index_for(name)
        return view.isRowHidden(index.row(), index.parent())

    assert view.set_filter("layer3.1 conv") == 2
    assert not hidden("layer3.1.conv1") and not hidden("layer3.1") and not hidden("layer3")
    assert hidden("layer3.1.bn1") and hidden("layer2") and hidden("fc") and hidden("layer3.0")
    assert view.isExpanded(tree.index_for("layer3")) and view.isExpanded(tree.index_for("layer3.1"))
    edit.setText("downsample")  # a match's descendants stay, to open it
    assert not hidden("layer2.0.downsample.0") and hidden("layer2.0.conv1")
    edit.setText("BatchNorm2d")
    assert "20 modules match" in edit.toolTip()
    tree.set_model_info(resnet18_info, PlanConfig())  # the filter outlives a new model
    assert hidden("layer1.0.conv1") and not hidden("layer1.0.bn1")
    edit.clear()
    assert not any(hidden(layer.name) for layer in resnet18_info.layers if layer.name)
    assert tree.index_for("layer3.1.conv1").data(TIP) == "layer3.1.conv1 (Conv2d)"  # the full dotted name


def test_columns_are_never_sized_from_every_rows_contents(qtbot, tree):
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(tree)
    modes = {view.header().sectionResizeMode(col) for col in range(len(HEADERS))}
    assert modes.isdisjoint({view.header().ResizeMode.ResizeToContents})
    assert view.header().sectionSize(PARAMS) > view.fontMetrics().horizontalAdvance("11,181,642")


# --- training evidence --------------------------------------------------------------------------


def test_integrity_badges_on_frozen_modules(qtmodeltester, tree):
    tree.set_integrity(IntegrityReport(epoch=3, checked=120))
    badge = tree.index_for("layer1", FROZEN)
    assert badge.data() == "✓" and "Unchanged, checked after epoch 3 (120 tensors)" in badge.data(TIP)
    assert tree.index_for("fc", FROZEN).data() is None and tree.index_for("", FROZEN).data() is None  # they train
    assert tree.index_for("relu", FROZEN).data() is None  # nothing to freeze
    cells = record_changed_cells(tree)
    tree.set_integrity(IntegrityReport(epoch=4, checked=120, changed=("layer1.0.bn1.running_mean",)))
    owners = ("layer1.0.bn1", "layer1.0", "layer1", "")
    for name in owners:
        cell = tree.index_for(name, FROZEN)
        assert cell.data() == "⚠" and "layer1.0.bn1.running_mean" in cell.data(TIP)
        assert cell.data(Qt.ItemDataRole.ForegroundRole).color().red() > 150
    assert "epoch 4" in tree.index_for("layer2", FROZEN).data(TIP)
    assert {col for _, col in cells} == {FROZEN}  # the badges' cells only
    qtmodeltester.check(tree, force_py=True)
    tree.set_integrity(None)
    assert all(tree.index_for(layer.name, FROZEN).data() is None for layer in tree.model_info.layers)


def test_gradual_unfreezing_takes_the_badge_from_modules_already_training(tree):
    tree.set_plan_config(PlanConfig(strategy="gradual"))
    tree.set_integrity(IntegrityReport(epoch=2, checked=80))
    assert tree.module_row("layer4")["unfreeze_epoch"] == 1  # trained during epoch 2
    # No badge on what trains now; the stage says since when, a still-frozen stage until when.
    assert tree.index_for("layer4", FROZEN).data() == "trains ep 2+"
    assert tree.index_for("layer4.0", FROZEN).data() is None  # said once, on the stage
    assert tree.index_for("layer1", FROZEN).data() == "✓ until ep 5"
    assert tree.index_for("conv1", FROZEN).data().startswith("✓")


def test_update_ratio_column(qtmodeltester, fine_tune_tree):
    tree = fine_tune_tree
    tree.apply_edit(PlanEdit("layer2", frozen=True))
    stats = {"layer1": LayerStats(0.5, 1e-3, 0.0), "layer4": LayerStats(0.2, 5e-2, 0.1),
             "fc": LayerStats(0.0, 0.0, 1.0), "layer2": LayerStats(0.0, 0.0, 1.0), "layer3.0": LayerStats(0.1, 2e-5, 0.0)}
    cells = record_changed_cells(tree)
    tree.set_layer_stats(stats)
    assert set(cells) == {(name, RATIO) for name in stats}
    ratio = lambda name: tree.index_for(name, RATIO)  # noqa: E731
    assert ratio("layer1").data() == "1.0e-03" and ratio("layer2").data() == "0" and ratio("conv1").data() is None
    background = lambda name: ratio(name).data(Qt.ItemDataRole.BackgroundRole)  # noqa: E731
    assert background("layer1").color() == HEALTH["healthy"][0]
    assert background("layer4").color() == HEALTH["too_high"][0]
    assert background("fc").color() == HEALTH["dead"][0]  # trainable and learns nothing
    assert background("layer3.0").color() == HEALTH["low"][0]
    assert background("layer2") is None  # frozen: 0 is expected
    tip = ratio("layer4").data(TIP)
    assert "‖Δθ‖/‖θ‖ per optimizer step" in tip and "too high" in tip and "zero gradients 10.0 %" in tip
    assert "Gradient norm 0.2" in tip
    qtmodeltester.check(tree, force_py=True)
    cells.clear()
    tree.set_layer_stats({**stats, "layer4": LayerStats(0.2, 4e-3, 0.1)})
    assert cells == [("layer4", RATIO)]
    cells.clear()
    tree.clear_evidence()
    assert set(cells) == {(name, RATIO) for name in stats} and ratio("layer1").data() is None


def test_ratio_health_bands():
    assert ratio_health(0.0, frozen=True, scheduled=False) == "frozen"
    assert ratio_health(0.0, frozen=False, scheduled=False) == "dead"
    assert ratio_health(0.0, frozen=True, scheduled=True) == "waiting"
    assert ratio_health(1e-3, frozen=True, scheduled=False) == "moved"
    assert [ratio_health(r, False, False) for r in (1e-5, 1e-3, 5e-3, 0.1)] == ["low", "healthy", "high", "too_high"]


def test_the_view_repaints_the_changed_rows_it_shows_and_nothing_else(qtbot, resnet18_info):
    model = CountingModel()
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(model)
    view.resize(800, 600)
    model.set_model_info(resnet18_info, PlanConfig(strategy="fine-tune"))
    view.show()
    qtbot.waitExposed(view)
    view.expand(model.index_for("layer1"))
    view.expand(model.index_for("layer1.0"))
    QApplication.processEvents()

    def asked_after(edit) -> set[str]:
        QApplication.processEvents()
        model.asked.clear()
        edit()
        QApplication.processEvents()
        return model.asked

    freeze = lambda name: lambda: model.apply_edit(PlanEdit(name, frozen=True))  # noqa: E731
    assert asked_after(freeze("layer1.0.conv2")) >= {"layer1.0.conv2", "layer1.0", "layer1", ""}
    assert "layer2" not in asked_after(freeze("layer1.0.bn2"))  # rows that did not change are not repainted
    assert asked_after(freeze("layer3.1.conv1")) <= {"layer3", ""}  # inside a collapsed subtree
    view.set_filter("bn")  # the filter hides rows between the ends of a range: repaint it all, to be safe
    assert "layer1.0.bn1" in asked_after(freeze("layer1.0"))
