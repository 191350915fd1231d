"""The window with a labels CSV (issue 25, item 6): the Data panel opens one (Browse, a drop, the
Task combo), shows its labels' counts or its value's range and histogram and its bad rows; the plots,
the runs list and Try an image show each task's own figures; the views that are single-label's say so
in one line. No training here: events and summaries are fed as the engine makes them."""

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
