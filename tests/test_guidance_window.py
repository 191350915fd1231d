"""Guidance in the window, widgets constructed directly: the advice card and the LR finder dialog."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import Qt

from app.advice_controller import ADVICE_FOLLOWED
from app.worker import BackgroundTasks
from engine.insight.advisor import Advice, advise
from engine.config import DataConfig, ModelConfig, PlanConfig, PlanEdit, RunConfig, TrainConfig
from engine.data.dataset import scan_dataset
from engine.data.demo import write_demo_dataset
from engine.insight.lr_finder import RangePoint, RangeTest, Suggestion, scale_plan
from engine.model.architectures import build_model
from engine.plan.optimization import schedule_preview
from engine.plan.plan import build_plan
from tests.gui_helpers import wait_ready
from widgets.advice_card import AdviceCard
from widgets.lr_finder_dialog import LrFinderDialog


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("tiny") / "shapes", classes=3, per_class=8, size=32, seed=2)


@pytest.fixture
def tasks(qtbot):
    tasks = BackgroundTasks()
    yield tasks
    tasks.shutdown()


def test_advice_card_shows_reasons_and_applies_only_on_click(qtbot, tiny_dir):
    card = AdviceCard()
    qtbot.addWidget(card)
    assert card.objectName() == "adviceCard" and not card.apply_button.isEnabled()
    advice = advise(scan_dataset(tiny_dir), "resnet18", "imagenet", measure=False)
    card.show_advice(advice)
    assert card.apply_button.objectName() == "adviceApplyButton" and card.apply_button.isEnabled()
    assert "Feature extraction" in card.title.text() and "24 images" in card.reasons.text()
    with qtbot.waitSignal(card.apply_requested) as signal:
        card.apply_button.click()
    assert signal.args == [advice]
    card.mark_applied(True)
    assert not card.apply_button.isEnabled() and card.apply_button.text() == "Applied"
    card.show_failure("no images")
    assert not card.apply_button.isEnabled() and "no images" in card.reasons.text()


def _config(tiny_dir, plan: PlanConfig) -> RunConfig:
    return RunConfig(data=DataConfig(root=str(tiny_dir), image_size=32, augment="none", decoded_cache_mb=16),
                     model=ModelConfig("resnet18", "none"), plan=plan,
                     train=TrainConfig(batch_size=8, device="cpu", telemetry=False, precision="off"))


def test_apply_scales_every_lr_and_keeps_the_ratios(qtbot, tiny_dir):
    plan = PlanConfig("discriminative", 1e-3, edits=(PlanEdit("layer4", lr=4e-4), PlanEdit("conv1", frozen=True)))
    dialog = LrFinderDialog(_config(tiny_dir, plan), None, submit=lambda *a: None)
    qtbot.addWidget(dialog)
    curve = tuple(RangePoint(m, {"base": 1e-3 * m}, loss, loss) for m, loss in ((0.1, 1.2), (1.0, 1.0), (10.0, 3.0)))
    dialog.show_result(RangeTest(curve, 1e-3, "diverged", Suggestion(1.0, 1e-3, "valley"),
                                 (Suggestion(0.1, 1e-4, "steepest"), Suggestion(0.1, 1e-4, "minimum/10"))))
    assert dialog.plot.getPlotItem().ctrl.logXCheck.isChecked()  # the curve is on a log axis
    assert len(dialog.marks.data) == 3 and dialog.choice.count() == 3
    dialog.choice.setCurrentIndex(1)  # steepest: x0.1
    with qtbot.waitSignal(dialog.applied) as signal:
        dialog.apply_button.click()
    scaled = signal.args[0]
    info = build_model("resnet18", 3, "none").info
    before, after = build_plan(plan, info), build_plan(scaled, info)
    for layer in info.layers:
        assert after.effective(layer.name).lr == pytest.approx(before.effective(layer.name).lr * 0.1, rel=1e-12)
        assert after.effective(layer.name).frozen == before.effective(layer.name).frozen
    assert scaled.edits[1] == plan.edits[1] and scaled.strategy == plan.strategy


def test_the_sweep_runs_off_the_gui_thread_and_shows_its_suggestions(qtbot, tiny_dir, tasks):
    threads = []

    def submit(fn, on_done, on_error):
        def job():
            threads.append(threading.current_thread())
            return fn()
        return tasks.submit("lr-find", job, on_done, on_error)

    dialog = LrFinderDialog(_config(tiny_dir, PlanConfig("feature-extraction", 1e-3)), None, submit, steps=30)
    qtbot.addWidget(dialog)
    dialog.start_button.click()
    assert dialog.running and dialog.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not dialog.running, timeout=60_000)
    assert threads and threads[0] is not threading.main_thread()
    result = dialog.result
    assert len(result.curve) >= 3 and dialog.apply_button.isEnabled() and "valley" in dialog.choice.currentText()
    x, _ = dialog.curve.getData()
    assert len(x) == len(result.curve)
    assert result.curve[0].multiplier <= dialog.chosen_multiplier() <= result.curve[-1].multiplier


def test_stop_ends_the_sweep(qtbot, tiny_dir, tasks):
    dialog = LrFinderDialog(_config(tiny_dir, PlanConfig("feature-extraction", 1e-3)), None,
                            lambda fn, done, error: tasks.submit("lr-find", fn, done, error), steps=100_000)
    qtbot.addWidget(dialog)
    dialog.start_button.click()
    dialog.stop_button.click()
    qtbot.waitUntil(lambda: not dialog.running, timeout=60_000)
    assert dialog.result.stopped == "user" and len(dialog.result.curve) < 100_000
    assert dialog.start_button.isEnabled() and not dialog.stop_button.isEnabled()


# --- the window: advice, LR finder, planned curves, class weights ------------------------------------------


def _undo(qtbot, win) -> None:
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)


def _wait_advice(qtbot, win, weights: str) -> Advice:
    card = win.data_panel.advice_card
    qtbot.waitUntil(lambda: card.advice is not None and win.session.advisor.advice is card.advice
                    and win.session.config().model.weights == weights, timeout=60_000)
    return card.advice


@pytest.mark.slow
def test_advice_card_applies_undoably_and_never_over_the_persons_edits(qtbot, window, tiny_dir):
    session, card = window.session, window.data_panel.advice_card
    session.settings.update_data({"augment": "standard"})
    window.model_panel.preset_buttons["fine-tune"].click()  # the person's own plan, before any advice
    window.open_folder(str(tiny_dir))
    wait_ready(qtbot, window, classes=3)
    advice = _wait_advice(qtbot, window, "imagenet")
    assert advice.strategy == "feature-extraction" and "24 images" in card.reasons.text()
    assert session.config().plan.strategy == "fine-tune"  # shown, not applied: the plan is the person's
    assert card.apply_button.isEnabled() and not card.note.isVisible()
    before = session.config()

    card.apply_button.click()
    after = session.config()
    assert after.plan == advice.plan and after.data.augment == "none"
    assert window.model_panel.tree_model.plan_config == advice.plan
    assert card.apply_button.text() == "Applied" and not card.apply_button.isEnabled()
    _undo(qtbot, window)
    assert session.config().plan == before.plan and session.config().data.augment == "standard"
    assert card.apply_button.isEnabled()  # no longer the advice's: Apply again
    window.redo_action.trigger()
    assert session.config().plan == advice.plan

    window.model_panel.preset_buttons["discriminative"].click()
    assert card.apply_button.isEnabled()  # an edit after Apply: the card says it no longer holds
    edited = session.config().plan
    session.settings.set_weights("none")  # new advice (random weights: fine-tune) arrives for this dataset
    later = _wait_advice(qtbot, window, "none")
    assert later.strategy == "fine-tune" and session.config().plan == edited


@pytest.mark.slow
def test_the_demo_opened_first_follows_the_advice_visibly_and_undoably(qtbot, window):
    session, card = window.session, window.data_panel.advice_card
    session.settings.update_data({"augment": "standard"})  # a data setting, not a plan edit
    session.settings.update_train({"epochs": 7})
    window.session.datasets.open_demo()
    advice = _wait_advice(qtbot, window, "imagenet")
    assert session.dataset.scan.total == 240 and advice.strategy == "feature-extraction"
    config = session.config()
    assert config.plan == advice.plan and config.plan.strategy == "feature-extraction"
    assert config.data.augment == "none" and config.train.epochs == 7  # epochs are gradual's to set
    assert card.note.isVisible() and card.note.text() == ADVICE_FOLLOWED
    assert "Presets follow the advice (Ctrl+Z undoes)" in window.statusBar().currentMessage()
    assert card.apply_button.text() == "Applied"
    _undo(qtbot, window)
    assert session.config().data.augment == "standard" and not card.note.isVisible()


@pytest.mark.slow
def test_lr_finder_from_the_window_scales_every_lr_and_keeps_the_ratios(qtbot, window, tiny_dir):
    session, tree = window.session, window.model_panel.tree_model
    session.settings.set_weights("none")
    window.open_folder(str(tiny_dir))
    wait_ready(qtbot, window, classes=3)
    session.settings.update_data({"image_size": 32})
    session.settings.update_train({"batch_size": 8, "device": "cpu"})
    window.model_panel.preset_buttons["discriminative"].click()
    session.plan.adopt_plan(session.config().plan.with_edit(PlanEdit("layer2", lr=3e-5)))
    before = {layer.name: tree.module_row(layer.name)["lr"] for layer in tree.model_info.layers}

    window.training_panel.lr_finder_button.click()
    dialog = window.lr_finder_dialog
    assert dialog.isVisible() and dialog.config == session.config() and dialog.scan is session.dataset.scan
    curve = tuple(RangePoint(m, {"base": 1e-3 * m}, loss, loss) for m, loss in ((0.5, 1.2), (2.0, 1.0), (8.0, 3.0)))
    dialog.show_result(RangeTest(curve, 1e-3, "diverged", Suggestion(2.0, 2e-3, "valley"), ()))
    dialog.apply_button.click()
    after = {layer.name: tree.module_row(layer.name)["lr"] for layer in tree.model_info.layers}
    assert after == {name: lr * 2.0 for name, lr in before.items()}  # x2 is exact in binary: equal, not close
    assert session.config().plan == scale_plan(dialog.config.plan, 2.0)
    _undo(qtbot, window)
    assert {layer.name: tree.module_row(layer.name)["lr"] for layer in tree.model_info.layers} == before


def _planned_values(plots) -> dict[str, list[float]]:
    return {name: list(curve.yData) for name, curve in plots.planned_curves().items()}  # as given, not log10


@pytest.mark.slow
def test_planned_lrs_are_drawn_dashed_before_start_and_the_run_draws_over_them(qtbot, window, tiny_dir):
    session, plots = window.session, window.plots
    session.settings.set_weights("none")
    window.open_folder(str(tiny_dir))
    wait_ready(qtbot, window, classes=3)
    session.settings.update_data({"image_size": 32})
    window.data_panel.class_weights_combo.setCurrentIndex(window.data_panel.class_weights_combo.findData("none"))
    session.settings.update_train({"epochs": 3, "batch_size": 8, "device": "cpu", "schedule": "cosine",
                          "warmup_epochs": 1.0, "telemetry": False})
    window.model_panel.preset_buttons["gradual"].click()
    config = session.config()
    built = build_model("resnet18", 3, "none")
    expected = schedule_preview(built.model, built.info, build_plan(config.plan, built.info), config.train,
                                -(-len(session.dataset.scan.train) // 8))
    want = {name: [e["lrs"][name] for e in expected if name in e["lrs"]] for name in expected[-1]["lrs"]}
    qtbot.waitUntil(lambda: _planned_values(plots) == want, timeout=30_000)
    curves = plots.planned_curves()
    assert len(curves) == len(expected[-1]["lrs"]) == 3  # a group joins at each of the 3 epochs
    assert all(c.opts["pen"].style() == Qt.PenStyle.DashLine for c in curves.values())
    head_group = next(iter(expected[0]["lrs"]))  # training from epoch 1
    assert list(curves[head_group].xData) == [1.0, 2.0, 3.0]
    assert plots.phases_label.isVisible() and "epoch 1: fc" in plots.phases_label.text()
    assert "epoch 2: + layer4" in plots.phases_label.text()

    with qtbot.waitSignal(window.controller.run_started, timeout=60_000) as started:
        with qtbot.waitSignal(window.controller.run_finished, timeout=120_000):
            window.training_panel.start_button.click()
    assert any("class weights off (setting)" in note for note in started.args[0].notes)
    assert "class weights off" in window.statusBar().currentMessage()
    plots.redraw()
    assert plots._lr_series and all(series.size for series in plots._lr_series.values())  # the real curves
    assert _planned_values(plots) == want  # still under them


def test_class_weights_choice_reaches_the_configuration_and_the_project_file(qtbot, window, tmp_path):
    combo = window.data_panel.class_weights_combo
    assert combo.objectName() == "classWeightsCombo" and "3x" in combo.toolTip()
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "none", "balanced"]
    combo.setCurrentIndex(combo.findData("balanced"))
    assert window.session.config().train.class_weights == "balanced"
    path = str(tmp_path / "p.tsproj.json")
    window.save_project(path)
    window.session.settings.update_train({"class_weights": "auto"})
    assert combo.currentData() == "auto"
    window.open_project(path)
    assert window.session.config().train.class_weights == "balanced" and combo.currentData() == "balanced"
