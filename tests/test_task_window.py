"""The window with a labels CSV (issue 25, item 6): the Data panel opens one (Browse, a drop, the
Task combo), shows its labels' counts or its value's range and histogram and its bad rows; the plots,
the runs list and Try an image show each task's own figures; the views that are single-label's say so
in one line (Insight's views of a task: tests/test_task_insight.py). No training here: events and
summaries are fed as the engine makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog

from engine.events import EpochEvent
from tests.gui_helpers import choose, find, wait_ready, window  # noqa: F401 - the fixture


def write_images(folder: Path, n: int, size: int = 16) -> list[str]:
    """n tiny PNGs (of 2 colours) in folder/images; their paths relative to `folder`."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        colour = (200, 40, 40) if i % 2 else (40, 40, 200)
        pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(folder / "images" / f"{i:04d}.png")
        names.append(f"images/{i:04d}.png")
    return names


def multilabel_csv(folder: Path, n: int = 24, bad: bool = True) -> Path:
    """Labels red/blue/round per image; with `bad`, a missing file and an unknown split value."""
    names = write_images(folder, n)
    rows = ["path,labels"]
    for i, name in enumerate(names):
        labels = ["red" if i % 2 else "blue"] + (["round"] if i % 3 == 0 else [])
        rows.append(f"{name},{' '.join(labels)}")
    if bad:
        rows.append("images/missing.png,red")
    path = folder / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def regression_csv(folder: Path, n: int = 24) -> Path:
    names = write_images(folder, n)
    rows = ["path,value"] + [f"{name},{i * 0.5}" for i, name in enumerate(names)] + ["images/0001.png,abc"]
    path = folder / "values.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def open_csv(qtbot, win, csv: Path, outputs: int) -> None:
    win.open_folder(str(csv))
    wait_ready(qtbot, win, outputs)


# --- item 1: the Data panel ---------------------------------------------------------------------


def test_a_multilabel_csv_opens_with_label_counts_and_its_bad_rows(qtbot, window, tmp_path):
    csv = multilabel_csv(tmp_path / "ml")
    open_csv(qtbot, window, csv, 3)
    panel = window.data_panel
    assert window.session.dataset.scan.task == "multi-label"
    assert "multi-label · 3 labels · 24 images" in panel.title()
    model = panel.class_model
    assert model.headerData(0, Qt.Orientation.Horizontal) == "Label"
    counts = {model.index(r, 0).data(): int(model.index(r, 1).data()) + int(model.index(r, 2).data())
              for r in range(model.rowCount())}
    assert counts == {"blue": 12, "red": 12, "round": 8}
    assert "Images without any label: 0" in panel.task_label.text()
    warning = find(window, "dataWarningLabel").text()
    assert "1 row(s) not used" in warning and "missing file images/missing.png" in warning
    assert "only single-label" not in warning and not find(window, "errorLabel").text()
    assert window.session.model_info.num_classes == 3
    card = panel.advice_card  # as `advise`: one line, not a traceback from the class-counting probes
    qtbot.waitUntil(lambda: "No advice for multi-label data" in card.reasons.text(), timeout=10_000)


def test_a_regression_csv_shows_the_range_and_a_histogram(qtbot, window, tmp_path):
    open_csv(qtbot, window, regression_csv(tmp_path / "reg"), 1)
    panel = window.data_panel
    assert "regression · 24 images" in panel.title()
    assert panel.class_table.isHidden()  # one "value" row says nothing
    text = panel.task_label.text()
    assert "min 0 · max 11.5" in text and text.count("#") >= 10  # the histogram's bars
    assert "value 'abc' is not a number" in find(window, "dataWarningLabel").text()
    assert window.session.model_info.num_classes == 1


def test_the_task_combo_sets_the_task_and_lists_the_csv_again(qtbot, window, tmp_path):
    csv = multilabel_csv(tmp_path / "ml", bad=False)
    open_csv(qtbot, window, csv, 3)
    choose(find(window, "taskCombo"), "regression")  # the CSV has no value column: one line, no traceback
    assert window.session.configuration.data.task == "regression"
    qtbot.waitUntil(lambda: bool(window.session.dataset.error), timeout=10_000)
    assert "--task regression needs a 'value' column" in window.session.dataset.error
    assert "needs a 'value' column" in find(window, "dataWarningLabel").text()
    choose(find(window, "taskCombo"), "multi-label")
    wait_ready(qtbot, window, 3)
    assert window.session.config().data.task == "multi-label"
    assert window.session.datasets.scan_for(window.session.config()) is not None


def test_browse_offers_a_labels_csv_and_a_csv_can_be_dropped(qtbot, window, tmp_path, monkeypatch):
    csv = multilabel_csv(tmp_path / "ml", bad=False)
    panel = window.data_panel
    asked = {}

    def get_open_file_name(parent, caption, folder, filter_text):
        asked["filter"] = filter_text
        return str(csv), filter_text

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(get_open_file_name))
    actions = [a.text() for a in panel.browse_button.menu().actions()]
    assert actions == ["Folder…", "Labels CSV…"]
    with qtbot.waitSignal(panel.folder_chosen) as chosen:
        panel.browse_csv_action.trigger()
    assert chosen.args == [str(csv)] and asked["filter"] == "Labels CSV (*.csv)"
    wait_ready(qtbot, window, 3)

    other = multilabel_csv(tmp_path / "dropped", n=12, bad=False)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(other))])
    drop = QDropEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    from PySide6.QtGui import QDragEnterEvent

    enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    window.dragEnterEvent(enter)
    assert enter.isAccepted()
    window.dropEvent(drop)
    qtbot.waitUntil(lambda: window.session.dataset.scan is not None
                    and window.session.dataset.folder == str(other), timeout=10_000)
    assert window.session.dataset.scan.total == 12


# --- item 2: the plots and the runs list show the task's figure ------------------------------------


def task_epoch(epoch: int, task: str, metrics: dict, is_best: bool = True) -> EpochEvent:
    return EpochEvent(epoch=epoch, epochs=3, train_loss=1.0 / epoch, train_accuracy=None if task == "regression" else 0.7,
                      val_loss=0.5 / epoch, val_accuracy=None, per_class_accuracy={}, confusion_matrix=[], seconds=0.1,
                      images_per_second=10.0, data_seconds=0.01, compute_seconds=0.09, lr={"fc": 1e-3},
                      trainable_params=10, is_best=is_best, task=task, val_metrics=metrics)


def test_the_score_plot_shows_map_and_macro_f1_then_r2_then_accuracy_again(qtbot):
    from widgets.plots import TrainingPlots

    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plot = plots.accuracy_plot
    plots.add_epoch(task_epoch(1, "multi-label", {"mAP": 0.6, "macro_f1": 0.4, "micro_f1": 0.5}))
    plots.add_epoch(task_epoch(2, "multi-label", {"mAP": 0.7, "macro_f1": None, "micro_f1": 0.5}))
    assert plot.getPlotItem().titleLabel.text == "mAP and macro F1 (validation)"
    assert plot.legend.entry_names() == ["val mAP", "val macro F1"]  # no train curve beside mAP
    assert list(plots._series["val_acc"].y) == [0.6, 0.7] and list(plots._series["val_second"].y) == [0.4]
    assert plots._series["train_acc"].size == 0 and list(plots._series["val_loss"].y) == [0.5, 0.25]

    plots.clear()
    plots.add_epoch(task_epoch(1, "regression", {"mae": 1.0, "rmse": 1.5, "r2": -0.5}))
    assert plot.getPlotItem().titleLabel.text == "R² (validation)"
    assert plot.getAxis("left").labelText == "R²" and plot.legend.entry_names() == ["val R²"]
    assert list(plots._series["val_acc"].y) == [-0.5]  # below 0: the axis follows the data

    plots.clear()  # a single-label run after it: accuracy, train and validation
    assert plot.getPlotItem().titleLabel.text == "Accuracy" and plot.legend.entry_names() == ["train", "validation"]


def test_the_runs_list_and_the_result_line_name_the_tasks_best_figure(tmp_path):
    import json

    from engine.events import FitResult
    from engine.runs.catalog import read_summary, val_accuracy_curve
    from engine.runs.run_folder import RunFolder
    from widgets.runs_view import RunsModel, describe_run
    from widgets.training_panel import result_line

    folder = RunFolder(tmp_path / "runs" / "20261206-100000")
    folder.path.mkdir(parents=True)
    folder.write_record({"config": {"data": {"root": str(tmp_path / "photos.csv")}}, "task": "multi-label",
                         "class_names": ["a", "b"], "status": "running"})
    for epoch, value, best in ((1, 0.5, True), (2, 0.8125, True), (3, 0.7, False)):
        folder.append_metrics({"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.6, "val_loss": 0.5,
                               "val_accuracy": None, "task": "multi-label", "val_mAP": value, "val_macro_f1": 0.5,
                               "val_micro_f1": 0.5, "is_best": best})
    row = read_summary(folder)
    assert row.task == "multi-label" and row.best_figure == ("mAP", 0.8125)  # the last epoch marked best
    model = RunsModel()
    model.set_runs([row])
    assert model.index(0, RunsModel.HEADERS.index("Best val")).data() == "mAP 0.812"
    assert "photos.csv (multi-label)" in describe_run(row) and "best mAP 0.812" in describe_run(row)
    assert val_accuracy_curve(folder) == ([1, 2, 3], [0.5, 0.8125, 0.7])
    assert json.loads(folder.metrics_path.read_text().splitlines()[0])["val_mAP"] == 0.5

    done = FitResult(run_dir="", checkpoint=None, best_epoch=4, best_val_accuracy=None, epochs_run=5, seconds=1.0,
                     images_per_second=1.0, stopped="completed", task="regression",
                     best_val_metrics={"mae": 0.5, "rmse": 0.7, "r2": 0.71})
    assert "best val R² 0.71 (epoch 4)" in result_line(done)


def test_a_regression_runs_history_is_drawn_without_a_training_accuracy(tmp_path):
    from app.insight_session import history_events
    from engine.runs.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    for epoch in (1, 2):
        folder.append_metrics({"epoch": epoch, "train_loss": 1.0, "train_accuracy": None, "val_loss": 0.5,
                               "task": "regression", "val_mae": 1.0, "val_rmse": 1.2, "val_r2": 0.1 * epoch})
    events = history_events(folder.read_epochs(), 2)
    assert len(events) == 2 and events[1][1].val_metrics["r2"] == pytest.approx(0.2)
    assert events[1][1].task == "regression"


# --- item 3: Try an image, and the views that stay single-label's -----------------------------------------


def test_try_an_image_shows_each_labels_probability_and_threshold_or_the_value(qtbot):
    from widgets.try_image import TryImagePanel

    panel = TryImagePanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.show_task_prediction("/x/cat.png", {"task": "multi-label", "labels": ["red"],
                                              "probabilities": {"red": 0.8, "blue": 0.35, "round": 0.6},
                                              "thresholds": {"red": 0.5, "blue": 0.3, "round": 0.7}})
    assert panel.bars.top() == [("red", 0.8), ("round", 0.6), ("blue", 0.35)]  # every label, most probable first
    assert panel.bars.over_threshold() == ["red", "blue"]
    assert panel.message.text().startswith("cat.png: red — ✓ marks")
    panel.bars.grab()  # paints the ticks without error
    panel.show_task_prediction("/x/dog.png", {"task": "regression", "value": 3.14159, "thresholds": {}})
    assert panel.bars.top() == [] and panel.message.text() == "dog.png: predicted value 3.142"


def test_suspects_refuse_a_task_in_one_line(qtbot, window, tmp_path):
    open_csv(qtbot, window, regression_csv(tmp_path / "reg"), 1)
    with qtbot.waitSignal(window.session.mending.search_refused) as refused:
        window.session.mending.find_suspects()
    assert refused.args == ["Suspects are for single-label data (class folders); this dataset is regression."]


# --- the whole path once: a multi-label run trained in the window, then tried ----------------------------------


@pytest.mark.slow
def test_a_multilabel_run_trains_in_the_window_and_its_figures_and_answers_show(qtbot, window, tmp_path):
    from app.insight_session import LoadedModels, task_answer

    csv = multilabel_csv(tmp_path / "ml", n=24)
    open_csv(qtbot, window, csv, 3)
    window.session.settings.set_weights("none")  # a small CPU run, as a person would set it
    find(window, "imageSizeSpin").setValue(32)
    find(window, "epochsSpin").setValue(2)
    find(window, "batchSizeSpin").setValue(16)
    choose(window.training_panel.device_combo, "cpu")
    find(window, "presetFeatureExtraction").click()
    with qtbot.waitSignal(window.controller.run_finished, timeout=120_000) as finished:
        find(window, "startButton").click()
    result = finished.args[0]
    assert result.task == "multi-label" and set(result.best_val_metrics) == {"mAP", "macro_f1", "micro_f1"}
    qtbot.waitUntil(lambda: "best val mAP" in find(window, "trainingProgress").format(), timeout=10_000)
    assert window.plots.score_task == "multi-label" and window.plots._series["val_acc"].size == 2
    page = window.insight.task_page  # Insight shows the run's per-label figures (tests/test_task_insight.py)
    qtbot.waitUntil(lambda: page.label_model.rowCount() == 3, timeout=20_000)

    answer = task_answer(LoadedModels(), Path(result.checkpoint), str(csv.parent / "images" / "0001.png"))
    assert answer["task"] == "multi-label" and set(answer["probabilities"]) == {"blue", "red", "round"}
    assert set(answer["thresholds"]) == {"blue", "red", "round"}
    with qtbot.waitSignal(window.session.insight.task_prediction_ready, timeout=20_000):
        window.session.insight.try_image(str(csv.parent / "images" / "0001.png"))
    assert [name for name, _ in window.insight.try_panel.bars.top()] != []
