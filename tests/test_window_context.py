"""The window shows what belongs to the open dataset and the shown run, and says what misleads (issue 21,
third pass): a past run's preview ends with another dataset or an edit; Insight, Export and the error
line drop what no longer holds; a restart shows a run with epochs; Continue keeps the earlier curves and
shows the plan the resumed run follows; the smoothed loss is bias-corrected; chance-level runs, weights
with NaN and gradual phases beyond the epochs are flagged; the LR finder's and the plan's marks have
legends."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.dataset_controller import NO_FOLDER
from app.runs_controller import chance_warning
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.demo import write_demo_dataset
from engine.errors import UserError
from engine.events import BatchEvent, FitResult, RunStarted
from engine.insight.lr_finder import RangePoint, RangeTest, Suggestion, steepest_index
from engine.model.architectures import build_model, load_backbone_weights
from engine.plan.optimization import ScheduleSegment
from engine.plan.plan import build_plan, never_thawed
from engine.plan.schedule import lr_factor
from engine.runs.run_folder import RunFolder
from engine.training.trainer import fit
from tests.gui_helpers import find, wait_ready
from widgets.lr_finder_dialog import LrFinderDialog
from widgets.plots import PLANNED_LEGEND, TrainingPlots


@pytest.fixture(scope="session")
def trained_run(demo_dir, tmp_path_factory) -> Path:
    """A finished, resumable one-epoch run of the demo (the head on cached features: seconds on a CPU)."""
    folder = tmp_path_factory.mktemp("trained") / "resnet18-trained"
    config = RunConfig(data=DataConfig(root=str(demo_dir), image_size=32, augment="none"),
                       model=ModelConfig(weights="none"), plan=PlanConfig(strategy="feature-extraction"),
                       train=TrainConfig(epochs=1, batch_size=16, device="cpu"), out_dir=str(folder))
    fit(config)
    return folder


@pytest.fixture(scope="session")
def other_dataset(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("other") / "three", classes=3, per_class=8, size=40, seed=1)


def listed_run(qtbot, win, trained: Path, name: str = "resnet18-past") -> Path:
    """A copy of the trained run in the window's runs folder, listed in its Runs tab."""
    path = win.session.runs_root / name
    shutil.copytree(trained, path)
    win.session.insight.refresh_runs()
    qtbot.waitUntil(lambda: win.runs_view.model.row_of(path) >= 0, timeout=20_000)
    return path


def preview(qtbot, win, path: Path) -> None:
    win.runs_view.table.clearSelection()
    assert win.runs_view.select_run(path)
    qtbot.waitUntil(win.model_panel.is_previewing, timeout=30_000)


# --- 5: a past run's preview ends with another dataset or an edit ----------------------------------------

@pytest.mark.slow
def test_opening_another_dataset_or_editing_ends_a_past_runs_preview(qtbot, window, demo_dir, trained_run,
                                                                    other_dataset):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    path = listed_run(qtbot, window, trained_run)
    preview(qtbot, window, path)
    banner, summary = find(window, "planPreviewBanner"), find(window, "trainableSummaryLabel")
    assert not banner.isHidden() and not find(window, "presetGradual").isEnabled()

    window.open_folder(str(other_dataset))
    assert not window.model_panel.is_previewing() and banner.isHidden()
    assert find(window, "presetGradual").isEnabled()
    wait_ready(qtbot, window, classes=3)
    qtbot.waitUntil(lambda: summary.text().startswith("Trainable"), timeout=30_000)  # not "Building resnet18…"
    find(window, "presetFineTune").click()
    assert window.session.config().plan.strategy == "fine-tune"

    preview(qtbot, window, path)
    find(window, "epochsSpin").setValue(3)  # an edit of the configuration
    assert not window.model_panel.is_previewing() and banner.isHidden()


# --- 6: stale results -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_another_dataset_drops_the_insight_of_a_run_of_the_one_before(qtbot, window, demo_dir, trained_run,
                                                                      other_dataset):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    path = listed_run(qtbot, window, trained_run)
    preview(qtbot, window, path)
    insight = window.insight
    qtbot.waitUntil(lambda: insight.matrix_model.rowCount() == 4 and insight.gallery_model.rowCount() > 0,
                    timeout=30_000)

    window.open_folder(str(other_dataset))
    assert insight.matrix_model.rowCount() == 0 and insight.gallery_model.rowCount() == 0
    assert window.session.insight.try_model_path() is None  # run A's checkpoint is not B's model
    qtbot.wait(300)  # a reading of A's insight still on its way is not shown
    assert insight.matrix_model.rowCount() == 0


@pytest.mark.slow
def test_deleting_the_shown_run_forgets_it(qtbot, window, demo_dir, trained_run):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    path = listed_run(qtbot, window, trained_run)
    window.session.run_list.use_configuration_of(str(path))
    label, export = find(window, "runFolderLabel"), find(window, "exportButton")
    assert label.text() == f"Last run: {path.name}" and export.isEnabled()

    window.session.run_list.delete_for_good(str(path))
    qtbot.waitUntil(lambda: not path.exists() and label.text() == "No run yet", timeout=20_000)
    assert not export.isEnabled() and window.session.run.folder is None
    assert window.insight.matrix_model.rowCount() == 0


@pytest.mark.slow
def test_a_good_project_and_a_blank_folder_replace_the_last_error(qtbot, window, demo_dir, tmp_path):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    good, bad = tmp_path / "good.tsproj.json", tmp_path / "bad.tsproj.json"
    window.save_project(str(good))
    bad.write_text(good.read_text().replace('"resnet18"', '"resnet1800"'))
    error = find(window, "errorLabel")

    window.open_project(str(bad))
    assert error.text() and not error.isHidden()
    window.open_project(str(good))
    assert error.text() == "" and error.isHidden()

    window.open_project(str(bad))
    field = find(window, "dataFolderEdit")
    field.setText("")
    field.returnPressed.emit()
    assert error.text() == NO_FOLDER


# --- 8: a restart shows the latest run with an epoch ------------------------------------------------------

@pytest.mark.slow
def test_a_restart_shows_the_latest_run_that_completed_an_epoch(qtbot, window, trained_run):
    runs = window.session.runs_root
    runs.mkdir(parents=True, exist_ok=True)
    useful = runs / "resnet18-useful"
    stopped = runs / "resnet18-stopped-at-0"
    shutil.copytree(trained_run, useful)
    shutil.copytree(trained_run, stopped)
    (stopped / "metrics.jsonl").write_text("")  # stopped before its first epoch ended
    for path in RunFolder(stopped).resume_path, RunFolder(stopped).checkpoint_path:
        path.unlink(missing_ok=True)
    later = RunFolder(useful).record_path.stat().st_mtime + 60
    os.utime(RunFolder(stopped).record_path, (later, later))  # the newest run folder

    window.open_startup()
    assert window.session.run.folder.path == useful
    assert find(window, "runFolderLabel").text() == f"Last run: {useful.name}"


# --- 9: Continue keeps the earlier curves and shows the plan the resumed run follows ---------------------

@pytest.mark.slow
def test_continue_shows_the_earlier_epochs_and_the_plan_it_follows(qtbot, window, trained_run):
    path = listed_run(qtbot, window, trained_run)
    window.session.run_list.use_configuration_of(str(path))
    wait_ready(qtbot, window, classes=4)
    window.session.settings.update_train({"epochs": 2})
    plots = window.plots
    with qtbot.waitSignal(window.controller.run_finished, timeout=120_000):
        window.session.run_list.continue_run_of(str(path))  # launched a turn of the event loop later
        qtbot.waitUntil(lambda: plots._series["val_acc"].size > 0, timeout=10_000)
        assert list(plots._series["val_acc"].x) == [1.0]  # epoch 1, read back before epoch 2 starts
    plots.redraw()
    assert list(plots._series["val_acc"].x) == [1.0, 2.0]

    recorded = RunFolder(path).read_epochs()
    assert [r.epoch for r in recorded] == [1, 2]

    def planned_like_recorded() -> bool:
        curves = plots.planned_curves()
        if not curves:
            return False
        for record in recorded:
            for label, lr in record.lr.items():
                x, y = curves[label].xData, curves[label].yData  # as given, not log10 as drawn
                at = np.flatnonzero(x == record.epoch)
                if len(at) != 1 or not math.isclose(y[at[0]], lr, rel_tol=1e-6):
                    return False
        return True

    qtbot.waitUntil(planned_like_recorded, timeout=30_000)  # not a fresh cosine over both epochs


def test_a_resumed_schedule_follows_the_trainers_segment():
    train = TrainConfig(epochs=8, schedule="cosine")
    segment = ScheduleSegment.resumed(train, 10, done_epochs=6, planned_epochs=6)
    assert (segment.first_step, segment.steps, segment.warmup_steps) == (60, 20, 0)
    assert segment.factor(79, "cosine") == lr_factor(19, 20, "cosine")
    assert ScheduleSegment.resumed(train, 10, 3, 8) == ScheduleSegment.planned(train, 10)  # same epochs: kept


# --- 15: the smoothed loss ----------------------------------------------------------------------------------

def _batch(step: int, loss: float) -> BatchEvent:
    return BatchEvent(epoch=1, epochs=1, step=step, steps=18, global_step=step, total_steps=18, loss=loss,
                      lrs={"fc": 1e-3}, images_per_second=1.0, eta_seconds=0.0)


def test_the_smoothed_loss_is_bias_corrected_and_the_raw_one_shown(qtbot):
    plots = TrainingPlots(smoothing=0.9)
    qtbot.addWidget(plots)
    losses = list(np.linspace(2.5, 1.55, 18))
    for step, loss in enumerate(losses, start=1):
        plots.add_batch(_batch(step, loss))
    plots.redraw()
    weights = 0.1 * 0.9 ** np.arange(17, -1, -1)
    expected = float(np.dot(weights, losses) / weights.sum())  # Adam's / TensorBoard's debiased EMA
    smoothed = plots._series["train_loss"].y
    assert smoothed[0] == pytest.approx(losses[0]) and smoothed[-1] == pytest.approx(expected)
    assert smoothed[-1] < 1.9  # uncorrected from the first value: 2.0, far above where the loss is
    x, y = plots._curves["train_loss_raw"].getData()
    assert list(y) == pytest.approx(losses)
    assert plots.loss_plot.legend.entry_names()[:2] == ["train (each step)", "train (smoothed)"]


# --- 16: sanity flags ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_at_chance_level_is_flagged_when_it_finishes(qtbot, window, tmp_path):
    started = RunStarted(run_dir=str(tmp_path / "r"), device="cpu", device_name="CPU", precision="fp32",
                         class_names=tuple("abcdefgh"), train_images=80, val_images=16, trainable_params=1,
                         total_params=1, feature_cache="")
    window.controller.run_started.emit(started)  # what the controller re-emits from the training thread
    window.controller.run_finished.emit(FitResult(run_dir=str(tmp_path / "r"), checkpoint=None, best_epoch=3,
                                                  best_val_accuracy=0.124, epochs_run=3, seconds=1.0,
                                                  images_per_second=1.0, stopped="completed"))
    assert "chance level for 8 classes" in find(window, "errorLabel").text()
    assert chance_warning(0.9, 8) == "" and chance_warning(0.6, 2) == "" and chance_warning(0.52, 2)


def test_weights_with_nan_are_refused_in_one_line():
    model = build_model("resnet18", 4, weights="none").model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError) as refused:
        load_backbone_weights(model, state, "bad.pth")
    assert "non-finite" in str(refused.value) and "layer1.0.conv1.weight" in str(refused.value)
    assert "\n" not in str(refused.value)


# --- 13: gradual phases beyond the epochs -------------------------------------------------------------------

@pytest.mark.slow
def test_gradual_phases_beyond_the_epochs_are_warned(qtbot, window, demo_dir):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    find(window, "presetGradual").click()
    find(window, "epochsSpin").setValue(4)
    warning = find(window, "modelWarningLabel")
    assert not warning.isHidden() and "never train" in warning.text()
    info = window.session.model_info
    late = never_thawed(build_plan(window.session.config().plan, info), info, 4)
    assert late and all(stage in warning.text() for stage in late)
    assert "layer4" not in late
    find(window, "epochsSpin").setValue(8)
    assert warning.isHidden()


# --- 18: the LR finder's suggestions and the planned LRs explained ---------------------------------------

def test_the_steepest_fall_is_not_the_first_step():
    ms = list(np.geomspace(1e-4, 1e2, 30))
    losses = [5.0, 2.5] + [2.4 - 0.02 * i for i in range(10)] + [2.2 - 0.2 * i for i in range(5)] + \
             [1.4 + 0.3 * i for i in range(13)]
    index = steepest_index(losses, ms)
    assert index >= 5 and 12 <= index <= 16


def test_the_lr_finder_and_the_planned_lrs_have_legends(qtbot):
    config = RunConfig(data=DataConfig(root="."), model=ModelConfig(weights="none"))
    dialog = LrFinderDialog(config, None, submit=lambda *a: None)
    qtbot.addWidget(dialog)
    curve = tuple(RangePoint(m, {"fc": m * 1e-3}, 2.0 - i * 0.01, 2.0) for i, m in enumerate(np.geomspace(1e-3, 1, 10)))
    dialog.show_result(RangeTest(curve, 1e-3, "completed", Suggestion(0.1, 1e-4, "valley"),
                                 (Suggestion(0.01, 1e-5, "steepest"), Suggestion(0.01, 1e-5, "minimum/10"))))
    names = dialog.legend_names()
    assert names[0] == "smoothed loss" and len(names) == 5
    assert any("valley" in n for n in names) and any("steepest" in n for n in names)
    assert any("chosen" in n for n in names)

    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.show_planned([{"epoch": 1, "lrs": {"fc": 1e-3}, "trainable": ["fc"]},
                        {"epoch": 2, "lrs": {"fc": 5e-4}, "trainable": ["fc"]}])
    assert plots.lr_plot.legend.entry_names() == [PLANNED_LEGEND]
    plots.show_planned([])
    assert plots.lr_plot.legend.entry_names() == []


def test_a_refused_try_keeps_no_bars_or_map_of_the_image_before(qtbot):
    from PySide6.QtGui import QImage

    from widgets.try_image import TryImagePanel

    panel = TryImagePanel()
    qtbot.addWidget(panel)
    overlay = QImage(8, 8, QImage.Format.Format_RGB32)
    overlay.fill(0)
    top = [{"class": "cat", "index": 0, "probability": 0.9}, {"class": "dog", "index": 1, "probability": 0.1}]
    panel.show_prediction("cat.png", {"top_k": top, "raw_top_k": top, "calibrated": False}, overlay)
    assert panel.bars.top() and panel.overlay.pixmap() is not None and not panel.overlay.pixmap().isNull()
    panel.show_error("that file is not an image")
    assert panel.bars.top() == [] and (panel.overlay.pixmap() is None or panel.overlay.pixmap().isNull())
    assert panel.message.text() == "that file is not an image"
