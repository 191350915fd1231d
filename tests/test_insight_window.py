"""The Insight and Runs tabs: the confusion matrix and its gallery after a real short run, the runs
list found again by a new window (Continue and Export on it), and each run's status as its folder
says it."""

from __future__ import annotations

import pytest
import json
import random
from dataclasses import replace
from pathlib import Path

import torch
from PySide6.QtCore import Qt

from app.insight_session import InsightSession
from app.main_window import window_with_private_settings
from engine.runs.catalog import config_diff, list_summaries, read_summary
from app.session_state import WINDOW_DEFAULTS
from app.worker import BackgroundTasks
from engine.config import PlanConfig, PlanEdit
from engine.runs.predictions import prediction_records, read_predictions, write_predictions
from engine.runs.run_folder import RunFolder
from tests.gui_helpers import find, wait_ready
from widgets.gallery import THUMB_SIZE
from widgets.insight import InsightView
from widgets.layer_tree import FROZEN, LR
from widgets.runs_view import RunsModel, RunsView


def short_run_settings(win, epochs: int) -> None:
    session = win.session
    session.settings.set_weights("none")
    session.settings.update_data({"image_size": 32})
    session.settings.update_train({"epochs": epochs, "batch_size": 16, "device": "cpu"})
    session.plan.apply_preset("feature-extraction")  # the head on cached features: seconds on a CPU


def train(qtbot, win, demo_dir, epochs: int = 1):
    win.open_folder(str(demo_dir))
    wait_ready(qtbot, win, classes=4)
    short_run_settings(win, epochs)
    with qtbot.waitSignal(win.controller.run_started, timeout=60_000) as started:
        with qtbot.waitSignal(win.controller.run_finished, timeout=120_000) as finished:
            find(win, "startButton").click()
    return started.args[0], finished.args[0]


def click_cell(qtbot, view, row: int, column: int) -> None:
    rect = view.visualRect(view.model().index(row, column))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def matrix_counts(model) -> list[list[int]]:
    return [[model.index(r, c).data() for c in range(model.columnCount())] for r in range(model.rowCount())]


@pytest.mark.slow
def test_after_a_short_run_the_matrix_counts_the_validation_set_and_a_cell_shows_its_images(qtbot, window, demo_dir):
    started, result = train(qtbot, window, demo_dir)
    insight = window.insight
    model = insight.matrix_model
    qtbot.waitUntil(lambda: model.rowCount() == 4, timeout=30_000)
    view = find(window, "confusionMatrixView")
    assert view.model() is model and model.columnCount() == 4
    assert model.headerData(2, Qt.Orientation.Vertical) == started.class_names[2]
    counts = matrix_counts(model)
    assert sum(map(sum, counts)) == started.val_images
    assert model.index(0, 0).data(Qt.ItemDataRole.BackgroundRole) is not None
    records = read_predictions(RunFolder(result.run_dir).predictions_path)
    assert len(records) == started.val_images

    window.show_view(insight)
    gallery = find(window, "galleryView")
    names = list(started.class_names)
    for row, column in {(0, 0), max(((r, c) for r in range(4) for c in range(4)), key=lambda rc: counts[rc[0]][rc[1]] * (rc[0] != rc[1]))}:
        click_cell(qtbot, view, row, column)
        shown = [gallery.model().record(i) for i in range(gallery.model().rowCount())]
        expected = [r for r in records if r.true == names[row] and r.pred == names[column]]
        assert sorted(r.path for r in shown) == sorted(r.path for r in expected)
        assert len(shown) == counts[row][column]
        assert [r.loss for r in shown] == sorted((r.loss for r in shown), reverse=True)
    click_cell(qtbot, view, 0, 0)
    assert gallery.model().rowCount() > 0
    qtbot.waitUntil(lambda: gallery.model().has_thumbnail(0), timeout=20_000)  # decoded off the GUI thread
    first = gallery.model().index(0)
    assert first.data(Qt.ItemDataRole.DecorationRole).width() <= THUMB_SIZE
    assert "→" in first.data() and "%" in first.data()
    gallery.setCurrentIndex(first)
    find(window, "gradCamButton").click()  # computed in the background from the best checkpoint
    overlay = find(window, "camOverlayLabel")
    qtbot.waitUntil(lambda: not overlay.pixmap().isNull(), timeout=30_000)
    assert "where it looked" in insight.preview_caption.text()
    per_class = find(window, "perClassTable").model()
    assert per_class.rowCount() == 4 and per_class.headerData(4, Qt.Orientation.Horizontal) == "Support"
    assert sum(int(per_class.index(r, 4).data()) for r in range(4)) == started.val_images

    # Try an image: the run's best checkpoint classifies one of its own validation images.
    image = str(Path(demo_dir) / records[0].path)
    window.insight.try_image_requested.emit(image)
    bars = window.insight.try_panel.bars
    qtbot.waitUntil(lambda: len(bars.top()) > 0, timeout=30_000)
    assert {name for name, _ in bars.top()} <= set(names)
    assert abs(sum(p for _, p in bars.top()) - 1.0) < 1e-3  # 4 classes, top 5: every probability


@pytest.mark.slow
def test_a_new_window_lists_the_earlier_run_and_continues_and_exports_it(qtbot, tmp_path, demo_dir):
    first = window_with_private_settings(tmp_path / "app")
    qtbot.addWidget(first)
    _, result = train(qtbot, first, demo_dir, epochs=1)
    first.close()

    again = window_with_private_settings(tmp_path / "app")  # the same settings, so the same runs folder
    qtbot.addWidget(again)
    try:
        again.open_folder(str(demo_dir))  # no run shown: the actions must work from the list alone
        wait_ready(qtbot, again, classes=4)
        runs = find(again, "runsList")
        qtbot.waitUntil(lambda: runs.model().rowCount() == 1, timeout=20_000)
        row = runs.model().run(0)
        assert str(row.path) == result.run_dir and row.status == "finished" and row.epochs_run == 1
        assert again.runs_view.select_run(result.run_dir)
        qtbot.waitUntil(lambda: again.insight.matrix_model.rowCount() == 4, timeout=20_000)  # its insight
        qtbot.waitUntil(lambda: again.plots.point_count() == 1, timeout=20_000)  # its curves

        find(again, "runExportButton").click()
        assert again.export_dialog is not None and again.export_dialog.isVisible()
        assert again.export_dialog.windowTitle() and result.checkpoint in str(again.session.exports.checkpoint())
        again.export_dialog.close()

        again.session.settings.update_train({"epochs": 2})
        with qtbot.waitSignal(again.controller.run_finished, timeout=120_000) as resumed:
            find(again, "runContinueButton").click()
        assert resumed.args[0].epochs_run == 2 and resumed.args[0].run_dir == result.run_dir
        qtbot.waitUntil(lambda: runs.model().rowCount() == 1 and runs.model().run(0).epochs_run == 2, timeout=20_000)
    finally:
        again.close()


def _record(folder: RunFolder, **fields) -> None:
    config = replace(WINDOW_DEFAULTS, out_dir=str(folder.path)).to_dict()
    folder.write_record({"config": config, "class_names": ["a", "b"], **fields})


def _result(stopped: str, best: float) -> dict:
    return {"run_dir": "", "checkpoint": None, "best_epoch": 1, "best_val_accuracy": best, "epochs_run": 2,
            "seconds": 1.0, "images_per_second": 1.0, "stopped": stopped}


def test_the_runs_model_reads_each_status_from_the_folder(qtbot, tmp_path):
    root = tmp_path / "runs"
    folders = {name: RunFolder(root / name) for name in ("done", "broke", "killed", "training", "old-stopped")}
    _record(folders["done"], status="finished", result=_result("completed", 0.75))
    _record(folders["broke"], status="failed")
    _record(folders["killed"], status="running")  # marked running, but nobody holds its lock
    (folders["killed"].lock_path).touch()
    _record(folders["old-stopped"], result=_result("user", 0.5))  # a folder from before statuses
    (root / "not-a-run").mkdir()  # no run.json: not listed
    (root / "not-a-run" / "notes.txt").write_text("x")
    with folders["training"].locked():
        _record(folders["training"], status="running")
        assert read_summary(folders["training"]).status == "running"
        summaries = {s.name: s for s in list_summaries(root)}
    assert {name: s.status for name, s in summaries.items()} == {
        "done": "finished", "broke": "failed", "killed": "interrupted", "training": "running",
        "old-stopped": "stopped"}
    assert read_summary(folders["training"]).status == "interrupted"  # the lock is let go now

    model = RunsModel()
    model.set_runs(list(summaries.values()))
    status_column = RunsModel.HEADERS.index("Status")
    shown = {model.run(r).name: model.index(r, status_column).data() for r in range(model.rowCount())}
    assert shown["killed"] == "interrupted" and shown["done"] == "finished"
    row = model.row_of(folders["done"].path)
    assert model.index(row, RunsModel.HEADERS.index("Best val")).data() == "75.0%"
    assert model.index(row, RunsModel.HEADERS.index("Architecture")).data() == WINDOW_DEFAULTS.model.arch


def test_two_selected_runs_are_compared(qtbot, tmp_path):
    root = tmp_path / "runs"
    for name, epochs, accuracies in (("a", 3, [0.3, 0.5, 0.6]), ("b", 2, [0.4, 0.7])):
        folder = RunFolder(root / name)
        config = replace(WINDOW_DEFAULTS, train=replace(WINDOW_DEFAULTS.train, epochs=epochs)).to_dict()
        folder.write_record({"config": config, "class_names": ["x", "y"], "status": "finished"})
        folder.start_metrics()
        for epoch, accuracy in enumerate(accuracies, 1):
            folder.append_metrics({"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0,
                                   "val_accuracy": accuracy})
    tasks = BackgroundTasks()
    session = InsightSession(tasks, root)
    view = RunsView()
    qtbot.addWidget(view)
    session.runs_listed.connect(view.show_runs)
    session.comparison_ready.connect(view.show_comparison)
    view.selection_changed.connect(lambda paths: session.compare(paths) if len(paths) > 1 else None)
    try:
        session.refresh_runs()
        qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=10_000)
        view.table.selectAll()
        qtbot.waitUntil(lambda: view.diff_table.rowCount() == 1, timeout=10_000)
        assert view.diff_table.item(0, 0).text() == "train.epochs"
        curves = [item for item in view.compare_plot.getPlotItem().listDataItems()]
        assert sorted(len(c.yData) for c in curves) == [2, 3]
        assert not view.buttons["continue"].isEnabled()  # actions act on one run
    finally:
        tasks.shutdown()


def test_config_diff_lists_only_the_keys_that_differ():
    a = WINDOW_DEFAULTS.to_dict()
    b = replace(WINDOW_DEFAULTS, train=replace(WINDOW_DEFAULTS.train, epochs=9)).to_dict()
    c = replace(WINDOW_DEFAULTS, plan=replace(WINDOW_DEFAULTS.plan, strategy="fine-tune")).to_dict()
    diff = dict(config_diff([a, b, c]))
    assert set(diff) == {"train.epochs", "plan.strategy"}
    assert diff["train.epochs"] == [json.dumps(WINDOW_DEFAULTS.train.epochs), "9", json.dumps(WINDOW_DEFAULTS.train.epochs)]
    assert config_diff([a, a]) == []


def test_the_gallery_of_a_generated_predictions_file(qtbot, tmp_path):
    """Without training: a run folder with a val_predictions.csv of the engine's format, images on
    disk, and the Insight view filled from it through the background tasks."""
    from PIL import Image

    from app.insight_session import read_insight

    names = ["cat", "dog", "fox"]
    data = tmp_path / "data"
    rng = random.Random(4)
    paths, labels = [], []
    for i in range(18):
        label = i % 3
        path = data / names[label] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24 + i, 20), (rng.randrange(256), 40, 90)).save(path)
        paths.append(f"{names[label]}/{i}.png")
        labels.append(label)
    logits = torch.randn(18, 3, generator=torch.Generator().manual_seed(0))
    records = prediction_records(paths, torch.tensor(labels), logits, names)
    folder = RunFolder(tmp_path / "runs" / "r1")
    config = replace(WINDOW_DEFAULTS, data=replace(WINDOW_DEFAULTS.data, root=str(data))).to_dict()
    folder.write_record({"config": config, "class_names": names, "status": "finished"})
    write_predictions(folder.predictions_path, records)

    tasks = BackgroundTasks()
    session = InsightSession(tasks, tmp_path / "runs")
    view = InsightView()
    qtbot.addWidget(view)
    session.insight_ready.connect(lambda insight: view.show_evaluation(insight.evaluation, insight.dataset_root))
    session.thumbnails_ready.connect(view.add_thumbnails)
    view.thumbnails_wanted.connect(session.want_thumbnails)
    try:
        session.open_insight(folder)
        qtbot.waitUntil(lambda: view.matrix_model.rowCount() == 3, timeout=10_000)
        assert sum(map(sum, matrix_counts(view.matrix_model))) == 18
        for row in range(3):
            for column in range(3):
                view.show_cell(row, column)
                expected = sorted((r for r in records if r.true == names[row] and r.pred == names[column]),
                                  key=lambda r: -r.loss)
                assert [r.path for r in view.gallery_model.records()] == [r.path for r in expected]
        counts = matrix_counts(view.matrix_model)
        fullest = max(((r, c) for r in range(3) for c in range(3)), key=lambda rc: counts[rc[0]][rc[1]])
        view.show_cell(*fullest)
        qtbot.waitUntil(lambda: all(map(view.gallery_model.has_thumbnail, range(counts[fullest[0]][fullest[1]]))),
                        timeout=10_000)
        assert read_insight(folder).points == []  # no embeddings.csv: an empty map, not an error
    finally:
        tasks.shutdown()


def test_delete_removes_only_a_run_folder_that_nothing_trains(qtbot, tmp_path):
    root = tmp_path / "runs"
    done, busy = RunFolder(root / "done"), RunFolder(root / "busy")
    _record(done, status="finished")
    outside = RunFolder(tmp_path / "elsewhere")
    _record(outside, status="finished")
    (root / "plain").mkdir()
    tasks = BackgroundTasks()
    session = InsightSession(tasks, root)
    try:
        with busy.locked():
            _record(busy, status="running")
            for folder in (busy.path, outside.path, root / "plain"):
                with qtbot.waitSignal(session.failed, timeout=10_000) as refused:
                    session.delete_run(str(folder))
                assert folder.exists() and refused.args[0]
        with qtbot.waitSignal(session.run_deleted, timeout=10_000):
            session.delete_run(str(done.path))
        assert not done.path.exists() and busy.path.exists()
    finally:
        tasks.shutdown()


@pytest.mark.slow
def test_a_selected_past_run_shows_its_plan_read_only_until_its_configuration_is_used(qtbot, tmp_path, demo_dir):
    root = tmp_path / "app" / "runs"
    plan = PlanConfig("discriminative", 2e-3, edits=(PlanEdit("layer1", frozen=True),))
    config = replace(WINDOW_DEFAULTS, data=replace(WINDOW_DEFAULTS.data, root=str(demo_dir)), plan=plan)
    folder = RunFolder(root / "resnet18-old")
    folder.write_record({"config": config.to_dict(), "class_names": ["a", "b", "c", "d"], "status": "finished"})
    win = window_with_private_settings(tmp_path / "app")
    qtbot.addWidget(win)
    win.show()
    try:
        win.open_folder(str(demo_dir))
        wait_ready(qtbot, win, classes=4)
        panel, tree = win.model_panel, win.model_panel.tree_model
        own = win.session.config().plan
        qtbot.waitUntil(lambda: win.runs_view.model.rowCount() == 1, timeout=20_000)
        assert win.runs_view.select_run(folder.path)
        qtbot.waitUntil(panel.is_previewing, timeout=20_000)
        assert tree.plan_config == plan and win.session.config().plan == own  # shown, not adopted
        banner = find(win, "planPreviewBanner")
        assert banner.isVisible() and banner.text() == ("Plan of run resnet18-old (read-only) — Use this "
                                                        "configuration to edit")
        frozen, lr = tree.index_for("layer2", FROZEN), tree.index_for("layer2", LR)
        assert not tree.flags(frozen) & Qt.ItemFlag.ItemIsUserCheckable
        assert not tree.flags(lr) & Qt.ItemFlag.ItemIsEditable
        assert not tree.setData(lr, "1e-4") and not tree.apply_edit(PlanEdit("layer2", frozen=True))
        assert tree.plan_config == plan and not find(win, "presetFineTune").isEnabled()

        find(win, "runUseButton").click()
        assert not panel.is_previewing() and not banner.isVisible()
        assert win.session.config().plan == plan and tree.plan_config == plan
        assert tree.flags(lr) & Qt.ItemFlag.ItemIsEditable and tree.flags(frozen) & Qt.ItemFlag.ItemIsUserCheckable
        assert tree.setData(lr, "1e-4") and win.session.config().plan.edits[-1] == PlanEdit("layer2", lr=1e-4)
    finally:
        win.close()


def test_refreshing_the_runs_list_keeps_the_selection_without_announcing_it_again(qtbot, tmp_path):
    from engine.runs.catalog import RunSummary
    from widgets.runs_view import RunsView

    runs = [RunSummary(tmp_path / name, f"2026-11-28 0{i}:00", "resnet18", "fine-tune", 1, 1, 0.5, "finished")
            for i, name in enumerate(["a", "b", "c"])]
    view = RunsView()
    qtbot.addWidget(view)
    view.show_runs(runs)
    announced = []
    view.selection_changed.connect(announced.append)
    assert view.select_run(tmp_path / "b") and announced == [[str(tmp_path / "b")]]
    view.show_runs(runs)  # a refresh (a run started or ended): the same selection, no new one
    assert view.selected_paths() == [str(tmp_path / "b")] and len(announced) == 1
    view.show_runs(runs[:1])  # the selected run is gone: that is news
    assert announced[-1] == [] and len(announced) == 2


def test_the_runs_list_stops_saying_there_are_no_runs_once_there_are(qtbot, tmp_path):
    from engine.runs.catalog import RunSummary
    from widgets.runs_view import RunsView

    view = RunsView()
    qtbot.addWidget(view)
    view.show_runs([])
    assert "No runs yet" in view.detail.text()
    view.show_runs([RunSummary(tmp_path / "a", "2026-11-28 04:00", "resnet18", "fine-tune", 1, 1, 0.5, "finished")])
    assert "No runs yet" not in view.detail.text() and "Select a run" in view.detail.text()
