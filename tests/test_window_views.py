"""Issue 21, third pass: the Runs tab tells runs apart, Grad-CAM at small image sizes, the
embeddings map shows the clicked image beside it, the Suspects tab's progress and duplicate pairs,
and advice whose sentences agree with the figures they cite."""

from __future__ import annotations

import pytest

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt

from app.session_state import WINDOW_DEFAULTS
from engine.runs.catalog import RunSummary, config_diff, read_summary
from engine.runs.run_folder import RunFolder
from tests.gui_helpers import click_plot_point
from widgets.runs_view import VISIBLE_ROWS, RunsModel, RunsView


def summary(root: Path, name: str, status: str = "finished", epochs_run: int = 2, dataset: str = "flowers",
            accuracy: float | None = 0.5) -> RunSummary:
    return RunSummary(root / name, "2026-11-28 04:00", "resnet18", "fine-tune", epochs_run, 5, accuracy, status,
                      dataset=dataset)


def runs_view(qtbot) -> RunsView:
    view = RunsView()
    qtbot.addWidget(view)
    return view


def click_row(qtbot, view: RunsView, row: int, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    rect = view.table.visualRect(view.model.index(row, 0))
    qtbot.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


# --- item 7: the Runs tab --------------------------------------------------------------------------


def test_a_run_row_names_its_dataset_folder(qtbot, tmp_path):
    folder = RunFolder(tmp_path / "runs" / "20261128-040000")
    config = replace(WINDOW_DEFAULTS, data=replace(WINDOW_DEFAULTS.data, root=str(tmp_path / "flowers")))
    folder.write_record({"config": config.to_dict(), "class_names": ["a", "b"], "status": "finished"})
    row = read_summary(folder)
    assert row.dataset == "flowers"
    model = RunsModel()
    model.set_runs([row])
    assert model.index(0, RunsModel.HEADERS.index("Dataset")).data() == "flowers"
    assert [h for h in ("Dataset", "Architecture", "Strategy", "Best val", "Started") if h not in RunsModel.HEADERS] == []


def test_the_diff_shows_only_what_differs_readably_and_never_the_run_folder(tmp_path):
    a = replace(WINDOW_DEFAULTS, out_dir=str(tmp_path / "run-a")).to_dict()
    b = replace(WINDOW_DEFAULTS, out_dir=str(tmp_path / "run-b"),
                model=replace(WINDOW_DEFAULTS.model, arch="efficientnet_b0"),
                plan=replace(WINDOW_DEFAULTS.plan, base_lr=3e-4)).to_dict()
    diff = dict(config_diff([a, b]))
    assert set(diff) == {"model.arch", "plan.base_lr"}  # not out_dir: every run has its own
    assert diff["model.arch"] == ["resnet18", "efficientnet_b0"]  # no JSON quotes
    assert diff["plan.base_lr"] == ["0.01", "0.0003"]  # feature extraction's default against a typed LR


def test_failed_runs_and_runs_stopped_before_an_epoch_are_hidden_until_show_all(qtbot, tmp_path):
    view = runs_view(qtbot)
    runs = [summary(tmp_path, "good"), summary(tmp_path, "broke", status="failed", epochs_run=1),
            summary(tmp_path, "stopped-at-0", status="stopped", epochs_run=0),
            summary(tmp_path, "killed-at-0", status="interrupted", epochs_run=0),
            summary(tmp_path, "stopped-later", status="stopped", epochs_run=2)]
    view.show_runs(runs)
    assert [view.model.run(r).name for r in range(view.model.rowCount())] == ["good", "stopped-later"]
    assert "3 hidden" in view.show_all.text()
    view.show_all.setChecked(True)
    assert view.model.rowCount() == 5


def test_the_detail_line_describes_the_run_just_clicked(qtbot, tmp_path):
    view = runs_view(qtbot)
    view.resize(900, 600)
    view.show()
    view.show_runs([summary(tmp_path, "first", dataset="birds"), summary(tmp_path, "second", dataset="cars")])
    click_row(qtbot, view, 0)
    assert view.detail.text().startswith("first: birds")
    click_row(qtbot, view, 1, Qt.KeyboardModifier.ControlModifier)  # two selected, the second just clicked
    assert "second: cars" in view.detail.text() and "2 runs" in view.detail.text()
    click_row(qtbot, view, 0)
    assert view.detail.text().startswith("first: birds")


def test_the_runs_list_shows_several_rows_beside_the_comparison(qtbot, tmp_path):
    view = runs_view(qtbot)
    view.resize(800, 480)
    view.show()
    view.show_runs([summary(tmp_path, f"r{i}") for i in range(12)])
    qtbot.waitExposed(view)
    row_height = view.table.rowHeight(0)
    assert view.table.viewport().height() >= VISIBLE_ROWS * row_height


def test_twenty_compared_runs_get_distinct_colours_and_no_legend_over_the_plot(qtbot, tmp_path):
    view = runs_view(qtbot)
    names = [f"run{i:02d}" for i in range(20)]
    curves = {name: ([1, 2], [0.1 * (i % 9), 0.5]) for i, name in enumerate(names)}
    view.show_comparison(curves, [("train.epochs", [str(i) for i in range(20)])], names)
    assert not view.legend.isVisible()
    pens = {item.opts["pen"].color().name() for item in view.compare_plot.getPlotItem().listDataItems()}
    assert len(pens) == 20
    swatches = {view.diff_table.horizontalHeaderItem(c).icon().pixmap(4, 4).toImage().pixelColor(1, 1).name()
                for c in range(1, 21)}
    assert swatches == pens  # each column's swatch is its curve's colour
    view.show_comparison({n: curves[n] for n in names[:2]}, [], names[:2])
    assert view.legend.isVisible()


# --- item 14: Grad-CAM at a small image size -------------------------------------------------------


def small_resnet(side: int):
    import torch

    from engine.deploy.predict import LoadedClassifier
    from engine.model.architectures import build_model

    torch.manual_seed(0)
    built = build_model("resnet18", 2, "none", side)
    return LoadedClassifier(built.model, "resnet18", ["a", "b"], built.preprocessing)


def noisy_image(path: Path, side: int) -> Path:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_grad_cam_at_32_px_uses_the_deepest_stage_that_still_has_a_map(tmp_path):
    from engine.insight.gradcam import explain

    classifier = small_resnet(32)
    assert classifier.preprocessing.crop == 32
    result = explain(classifier, noisy_image(tmp_path / "x.png", 32))
    assert result.layer == "layer3" and result.cells == (2, 2)  # layer4 is 1x1 at 32 px
    assert "layer4 is 1x1" in result.note
    assert result.cam.max() > result.cam.min()  # not one uniform square
    named = explain(classifier, tmp_path / "x.png", layer="layer4")  # asked for by name: kept, and said flat
    assert named.layer == "layer4" and "flat" in named.note


def test_the_grad_cam_caption_says_which_layer_was_shown(tmp_path, monkeypatch):
    from app.insight_session import LoadedModels, explain_image

    classifier = small_resnet(32)
    models = LoadedModels()
    monkeypatch.setattr(models, "classifier", lambda _path: classifier)
    _, caption, _ = explain_image(models, tmp_path / "best.pt", str(noisy_image(tmp_path / "x.png", 32)))
    assert "where it looked" in caption and "layer3" in caption


# --- item 10: the embeddings map shows the clicked image beside it ----------------------------------


def test_a_clicked_map_point_shows_its_image_beside_the_map_ringed_and_named(qtbot, tmp_path):
    from PySide6.QtGui import QImage

    from engine.runs.embeddings import EmbeddingPoint
    from widgets.insight import InsightView

    view = InsightView()
    qtbot.addWidget(view)
    view.resize(1000, 800)
    view.show()
    view.tabs.setCurrentIndex(1)  # the Embeddings tab
    points = [EmbeddingPoint("cat/1.png", "cat", "cat", 0.0, 0.0), EmbeddingPoint("dog/2.png", "dog", "cat", 1.0, 1.0)]
    view.embeddings.show_points(points, ["cat", "dog"])
    wanted = []

    def load(path: str) -> None:  # what the insight session does, in the background
        wanted.append(path)
        image = QImage(40, 30, QImage.Format.Format_RGB888)
        image.fill(Qt.GlobalColor.green)
        view.show_preview(image, Path(path).name)

    view.image_wanted.connect(load)
    qtbot.waitExposed(view)
    click_plot_point(qtbot, view.embeddings, 1.0, 1.0)
    assert wanted == [str(Path() / "dog/2.png")]
    assert view.point_image.isVisible() and not view.point_image.pixmap().isNull()  # beside the map
    assert view.preview.pixmap().isNull()  # not in the hidden Images tab
    assert "dog/2.png" in view.point_caption.text() and "predicted cat" in view.point_caption.text()
    assert view.embeddings.highlighted() == (1.0, 1.0)
    tip = view.embeddings.scatter.opts["tip"](x=1.0, y=1.0, data="dog/2.png")
    assert "dog/2.png" in tip and "predicted cat" in tip


def test_grad_cam_still_goes_to_the_images_tab_after_a_map_point(qtbot):
    from PySide6.QtGui import QImage

    from widgets.insight import InsightView

    view = InsightView()
    qtbot.addWidget(view)
    view._show_point("cat/1.png")
    view._explain("/data/cat/1.png")
    image = QImage(10, 10, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.red)
    view.show_preview(image, "where it looked")
    assert not view.preview.pixmap().isNull() and view.point_image.pixmap().isNull()


# --- item 11: the Suspects tab ---------------------------------------------------------------------


def test_find_suspects_reports_its_progress_stage_by_stage(tmp_path, resnet18_weights_file):
    from engine.curation.suspects import find_suspects
    from engine.data.demo import write_demo_dataset

    data = write_demo_dataset(tmp_path / "shapes", classes=2, per_class=8, size=32, seed=0)
    lines: list[str] = []
    find_suspects(data, "resnet18", str(resnet18_weights_file), folds=3, image_size=32, batch_size=4,
                  progress=lines.append)
    said = "\n".join(lines)
    assert "Listing" in said and "Computing features: batch 1 of 4" in said
    assert "Training probe 3 of 3" in said and lines[-1].startswith("Looking for near-duplicates")


def test_the_suspects_view_lists_every_duplicate_pair_and_names_the_probability(qtbot, tmp_path):
    from types import SimpleNamespace

    from widgets.suspects_view import SuspectsModel, SuspectsView

    view = SuspectsView()
    qtbot.addWidget(view)
    view.show()
    rows = [{"path": "cat/1.png", "given": "cat", "likely": "dog", "probability": 0.0}]
    pairs = [("cat/1.png", "dog/1.png", 0.999), ("cat/2.png", "cat/3.png", 0.991), ("dog/4.png", "fox/4.png", 0.985)]
    view.show_report(SimpleNamespace(suspects=rows, note="found", duplicates=pairs), str(tmp_path))
    model = view.duplicates_model
    assert view.duplicates.isVisible() and model.rowCount() == 3
    assert [model.index(r, 0).data() for r in range(3)] == ["cat/1.png", "cat/2.png", "dog/4.png"]
    assert "labels differ" in model.index(0, 3).data() and "in training and one in validation" in model.index(1, 3).data()
    assert SuspectsModel.HEADERS[4] == "P(given label)"
    assert "given label" in view.model.headerData(4, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    view.show_report(SimpleNamespace(suspects=rows, note="found", duplicates=[]), str(tmp_path))
    assert not view.duplicates.isVisible()


@pytest.mark.slow
def test_the_search_progress_reaches_the_suspects_status_line(qtbot, window):
    finder = window.session.mending.suspect_finder
    finder.progressed.emit("Computing features: batch 3 of 9 (32 images each)…")
    assert window.suspects_view.note.text().startswith("Computing features: batch 3 of 9")


# --- item 17: advice that agrees with its own figures ----------------------------------------------


def backbone(last: float, earlier: list[float]) -> dict:
    return {"linear_probe": last, "knn": last,
            "stage_probes": [{"stage": f"s{i}", "accuracy": a} for i, a in enumerate([*earlier, last])]}


def test_a_strong_frozen_probe_is_never_called_a_far_domain():
    from engine.insight.advisor import far_domain

    far, why = far_domain(backbone(0.92, [0.40, 0.91]), "imagenet")
    assert not far and "92%" in why and "far from" not in why


def test_an_earlier_stage_above_the_last_is_not_said_to_be_within_the_margin():
    from engine.insight.advisor import far_domain

    far, why = far_domain(backbone(0.40, [0.20, 0.48]), "imagenet")
    assert far and "within" not in why and "48%" in why and "beats the last one (40%)" in why


def test_every_far_domain_sentence_agrees_with_the_percentages_it_shows():
    import re

    from engine.insight.advisor import far_domain

    for last in (0.30, 0.555, 0.60, 0.70, 0.84, 0.86, 0.99):
        for delta in (-0.2, -0.03, -0.021, -0.015, 0.0, 0.004, 0.08):
            best = min(max(last + delta, 0.0), 1.0)
            _, why = far_domain(backbone(last, [0.1, best]), "imagenet")
            shown_last, shown_best = round(last * 100), round(best * 100)
            if "within 2%" in why:
                assert 0 <= shown_last - shown_best <= 2, why
            if "beats" in why:
                assert shown_best > shown_last, why
            added = re.search(r"add (\d+) points", why)
            if added:
                assert int(added.group(1)) == shown_last - shown_best > 2, why


def test_the_window_refuses_an_unrecorded_pt2_in_its_own_words(tmp_path):
    """The engine's refusal names the command line's --trust; Try an image has no such flag (issue 21, item 19)."""
    from app.insight_session import LoadedModels
    from engine.errors import UserError

    bad = tmp_path / "someone-elses.pt2"
    bad.write_bytes(b"PK not ours")
    with pytest.raises(UserError) as info:
        LoadedModels().exported(bad)
    assert "--" not in str(info.value) and "can run code" in str(info.value)
