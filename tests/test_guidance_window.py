"""Guidance in the window, widgets constructed directly: the advice card and the LR finder dialog."""

from __future__ import annotations

import threading

import pytest
import torch

from app.worker import BackgroundTasks
from engine.advisor import advise
from engine.config import DataConfig, ModelConfig, PlanConfig, PlanEdit, RunConfig, TrainConfig
from engine.data import scan_dataset
from engine.demo import write_demo_dataset
from engine.lr_finder import RangePoint, RangeTest, Suggestion
from engine.models import build_model
from engine.plan import build_plan
from widgets.advice_card import AdviceCard
from widgets.lr_finder_dialog import LrFinderDialog


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
