"""Insight for multi-label and regression runs (issue 25): the per-label table as evaluate --json gives
it, the per-label 2x2 grid and the images of a clicked cell by loss, Grad-CAM of one label, the
regression scatter (a clicked point shows its image) and the largest residuals. No training: a run
folder is written as the trainer writes one (val_outputs.pt, a checkpoint of an untrained resnet18
carrying the task's fields), with generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import Qt

from engine.model.architectures import build_model
from engine.model.checkpoint import atomic_torch_save, make_checkpoint
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import write_val_outputs
from tests.gui_helpers import click_plot_point
from tests.helpers import cli

LABELS = ["blue", "red", "round"]
IMAGES, VALIDATION, SIZE = 24, 16, 32


def write_images(folder: Path) -> list[str]:
    """IMAGES noisy red or blue PNGs in folder/images; their paths relative to `folder`."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(IMAGES):
        colour = (200, 40, 40) if i % 2 else (40, 40, 200)
        pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (SIZE, SIZE, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(folder / "images" / f"{i:04d}.png")
        names.append(f"images/{i:04d}.png")
    return names


def write_run(tmp_path: Path, task: str) -> tuple[RunFolder, list[str], torch.Tensor, torch.Tensor]:
    """A finished run of `task` on generated images: (folder, validation paths, outputs, targets) as
    val_outputs.pt holds them (multi-label: logits and multi-hot targets; regression: the standardised
    output and the values)."""
    data = tmp_path / "data"
    paths = write_images(data)[:VALIDATION]
    generator = torch.Generator().manual_seed(3)
    names = LABELS if task == "multi-label" else ["value"]
    if task == "multi-label":
        targets = torch.tensor([[i % 2 == 0, i % 2 == 1, i % 3 == 0] for i in range(VALIDATION)], dtype=torch.float32)
        outputs = 2 * targets - 1 + 1.5 * torch.randn(VALIDATION, 3, generator=generator)  # a few mistakes
        fields = {"name": task, "thresholds": [0.5, 0.5, 0.5]}
    else:
        targets = torch.arange(VALIDATION, dtype=torch.float32) * 0.5
        outputs = ((targets - 4.0) / 2.0 + 0.4 * torch.randn(VALIDATION, generator=generator))[:, None]
        fields = {"name": task, "mean": 4.0, "scale": 2.0, "loss": "mse"}
    torch.manual_seed(0)
    built = build_model("resnet18", len(names), "none", SIZE, min_classes=1)
    checkpoint = make_checkpoint(built.model, arch="resnet18", class_names=names,
                                 preprocessing=built.preprocessing.to_dict(), plan={}, metrics={}, epoch=1, config={})
    folder = RunFolder(tmp_path / "runs" / f"{task}-run")
    folder.path.mkdir(parents=True)
    atomic_torch_save({**checkpoint, "task": fields}, folder.checkpoint_path)
    folder.write_record({"config": {}, "task": task, "class_names": names, "dataset": {"root": str(data)},
                         "status": "finished"})
    write_val_outputs(folder.val_outputs_path, 1, task, names, paths, targets, outputs, {})
    return folder, paths, outputs, targets


@pytest.fixture
def shown(qtbot, tmp_path):
    """Open a run in an Insight view fed by an InsightSession, as the window wires them."""
    from app.insight_session import InsightSession
    from app.worker import BackgroundTasks
    from widgets.insight import InsightView

    tasks = BackgroundTasks()
    session = InsightSession(tasks, tmp_path / "runs")
    view = InsightView()
    qtbot.addWidget(view)
    view.resize(1000, 760)
    view.show()
    session.insight_ready.connect(lambda insight: view.show_task_evaluation(insight.evaluation, insight.dataset_root,
                                                                            insight.name))
    session.insight_missing.connect(view.show_missing)
    session.thumbnails_ready.connect(view.add_thumbnails)
    session.preview_ready.connect(view.show_preview)
    view.thumbnails_wanted.connect(session.want_thumbnails)
    view.image_wanted.connect(session.show_image)
    view.explain_label_requested.connect(session.explain)

    def show(task: str):
        made = write_run(tmp_path, task)
        session.open_insight(made[0])
        qtbot.waitUntil(lambda: view.task_page.summary.text() != "", timeout=20_000)
        return (view, session, *made)

    yield show
    tasks.shutdown()


def click_cell(qtbot, table, row: int, column: int) -> None:
    rect = table.visualRect(table.model().index(row, column))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_the_per_label_table_holds_evaluate_jsons_figures(shown, capsys):
    from engine.insight.task_views import CELLS
    from widgets.label_table import PerLabelModel

    view, _, folder, paths, _, _ = shown("multi-label")
    assert view.task_page.isVisible() and not view.matrix_view.isVisible()
    assert view.tabs.tabText(view.tabs.currentIndex()) == "Label images"
    assert "multi-label · mAP" in view.task_page.summary.text() and f"on {VALIDATION} validation" in view.task_page.summary.text()
    rc, out, err = cli(capsys, "evaluate", folder.path, "--json")
    assert rc == 0, err
    per_label = json.loads(out)["per_label"]
    model = view.task_page.label_model
    assert [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())] == list(PerLabelModel.HEADERS)
    table = {model.index(r, 0).data(): {key: model.index(r, c + 1).data(PerLabelModel.ValueRole)
                                        for c, key in enumerate(PerLabelModel.KEYS)} for r in range(model.rowCount())}
    assert table == per_label
    grid = view.task_page.grid.grid_model
    for label in LABELS:  # the grid's TP and support agree with the figures
        assert sum(grid.count(label, cell) for cell in CELLS) == VALIDATION
        assert grid.count(label, "tp") + grid.count(label, "fn") == per_label[label]["support"]


def test_a_grid_cell_shows_exactly_its_images_by_that_labels_loss(shown, qtbot):
    from engine.insight.task_views import CELL_NAMES, CELLS

    view, _, _, paths, outputs, targets = shown("multi-label")
    page = view.task_page
    probabilities = outputs.sigmoid()
    table = page.label_model
    thresholds = [table.index(r, 5).data(table.ValueRole) for r in range(table.rowCount())]
    qtbot.waitExposed(page.grid)
    for row, label in enumerate(LABELS):
        for column, cell in enumerate(CELLS):
            click_cell(qtbot, page.grid, row, column)
            present, predicted = cell in ("tp", "fn"), cell in ("tp", "fp")
            expected = [i for i in range(VALIDATION) if bool(targets[i, row] > 0.5) == present
                        and bool(probabilities[i, row] >= thresholds[row]) == predicted]
            shown_rows = page.images.gallery_model.records()
            assert page.grid.grid_model.count(label, cell) == len(expected)
            assert sorted(r.path for r in shown_rows) == sorted(paths[i] for i in expected), (label, cell)
            losses = [r.loss for r in shown_rows]
            assert losses == sorted(losses, reverse=True)
            for r in shown_rows:  # the loss is that label's binary cross-entropy on the image
                i = paths.index(r.path)
                bce = float(torch.nn.functional.binary_cross_entropy_with_logits(outputs[i, row], targets[i, row]))
                assert r.loss == pytest.approx(bce, abs=1e-5) and r.label == label
            assert page.images.label_combo.currentText() == label
            assert page.images.what.text().startswith(f"{label}, {CELL_NAMES[cell]}: {len(expected)} image(s)")


def test_grad_cam_of_a_label_targets_its_logit(shown, qtbot):
    view, _, folder, paths, _, _ = shown("multi-label")
    page = view.task_page
    page.show_label_cell("round", "tp")
    assert page.images.gallery_model.rowCount() > 0
    page.images.label_combo.setCurrentText("red")
    page.images.gallery.setCurrentIndex(page.images.gallery_model.index(0))
    page.images.cam_button.click()
    qtbot.waitUntil(lambda: "where it looked for red" in page.images.caption.text(), timeout=30_000)
    assert not page.images.preview.pixmap().isNull()

    from engine.deploy.predict import load_classifier
    from engine.errors import UserError
    from engine.insight.gradcam import explain

    classifier = load_classifier(folder.checkpoint_path)
    image = str(Path(view.task_page._root) / paths[0])
    result = explain(classifier, image, target="red")
    probabilities = sorted(result.probabilities.values(), reverse=True)
    assert result.target == "red" and sum(probabilities) != pytest.approx(1.0)  # sigmoids, one per label
    with pytest.raises(UserError, match="multi-label model's Grad-CAM explains one label"):
        explain(classifier, image)


def test_explain_names_the_label_on_the_command_line(tmp_path, capsys):
    folder, paths, _, _ = write_run(tmp_path, "multi-label")
    image = tmp_path / "data" / paths[0]
    rc, out, err = cli(capsys, "explain", folder.checkpoint_path, image, "--target", "round", "--out", tmp_path / "cams",
                       "--json")
    assert rc == 0, err
    report = json.loads(out)[0]
    assert report["target"] == "round" and set(report["probabilities"]) == set(LABELS)
    assert (tmp_path / "cams" / f"{image.stem}.cam.png").is_file()
    rc, _, err = cli(capsys, "explain", folder.checkpoint_path, image, "--target", "square", "--out", tmp_path / "cams")
    assert rc == 2 and "unknown label 'square'" in err and len(err.strip().splitlines()) == 1


def test_the_scatter_has_a_point_per_image_and_a_click_shows_it(shown, qtbot):
    view, _, _, paths, outputs, targets = shown("regression")
    page = view.task_page
    assert page.scatter.isVisible() and not page.grid.isVisible()
    assert view.tabs.tabText(view.tabs.currentIndex()) == "Residuals"
    assert "regression · MAE" in page.summary.text() and "R²" in page.summary.text()
    predicted = (outputs[:, 0].double() * 2.0 + 4.0).tolist()  # the checkpoint's scale and mean
    points = page.scatter.points()
    assert sorted(p[2] for p in points) == sorted(paths)  # one point per validation image
    at = {path: (x, y) for x, y, path in points}
    for path, actual, value in zip(paths, targets.tolist(), predicted):
        assert at[path] == pytest.approx((actual, value), abs=1e-5)
    qtbot.waitExposed(page.scatter)
    with qtbot.waitSignal(view.image_wanted) as wanted:
        click_plot_point(qtbot, page.scatter, targets[5].item(), predicted[5])
    assert wanted.args == [str(Path(page._root) / paths[5])]
    qtbot.waitUntil(lambda: not page.images.preview.pixmap().isNull(), timeout=10_000)
    assert paths[5] in page.images.caption.text() and "residual" in page.images.caption.text()
    assert page.scatter.ring.getData()[0].tolist() == pytest.approx([targets[5].item()])


def test_the_residual_gallery_is_ordered_by_the_residuals_size(shown, qtbot):
    view, _, _, paths, outputs, targets = shown("regression")
    page = view.task_page
    records = page.images.gallery_model.records()
    residuals = {p: v - t for p, v, t in zip(paths, (outputs[:, 0].double() * 2.0 + 4.0).tolist(), targets.tolist())}
    assert [r.path for r in records] == sorted(paths, key=lambda p: -abs(residuals[p]))
    assert [r.residual for r in records] == pytest.approx([residuals[r.path] for r in records])
    assert not page.images.cam_button.isVisible()  # no Grad-CAM for a value
    click_cell(qtbot, page.images.gallery, 0, 0)  # the largest: its point is ringed, its image shown
    assert page.scatter.ring.getData()[1].tolist() == pytest.approx([records[0].predicted])
    qtbot.waitUntil(lambda: not page.images.preview.pixmap().isNull(), timeout=10_000)


def test_the_window_says_why_a_task_run_has_no_insight_and_shows_one_that_has_in_the_matrixs_place(qtbot, window, tmp_path):
    folder = RunFolder(tmp_path / "runs" / "20261206-100000")
    folder.path.mkdir(parents=True)
    folder.write_record({"config": {}, "task": "regression", "class_names": ["value"], "status": "finished"})
    window.show_view(window.insight)
    window.session.insight.open_insight(folder)
    summary = window.insight.summary
    qtbot.waitUntil(lambda: "regression run without a checkpoint" in summary.text(), timeout=10_000)
    assert "\n" not in summary.text() and summary.isVisible()

    task_run = write_run(tmp_path / "other", "multi-label")[0]
    window.session.insight.open_insight(task_run)  # the window's wiring: the task's page, its images
    page = window.insight.task_page
    qtbot.waitUntil(lambda: page.label_model.rowCount() == 3, timeout=20_000)
    assert page.isVisible() and not summary.isVisible()
    window.insight.show_missing("")
    assert not page.isVisible() and window.insight.tabs.tabText(window.insight.tabs.currentIndex()) == "Images"
