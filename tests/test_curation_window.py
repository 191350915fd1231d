"""Mending the data (issue 12), the window's part and the training's: a relabel costs the frozen
trunk no new pass (features kept per file), and the window's moves, undo and redo keep its class
table in step with the files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.training import setup as run_setup
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import scan_dataset
from engine.curation.dataset_edits import JOURNAL_NAME, relabel
from engine.data.demo import write_demo_dataset
from engine.events import Callbacks
from engine.runs.run_folder import RunFolder
from engine.training.trainer import fit


def tiny_dataset(root: Path) -> Path:
    """3 classes x 8 images of 32 px."""
    return write_demo_dataset(root, classes=3, per_class=8, size=32, seed=0)


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every dataset file (the journal aside)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != JOURNAL_NAME}


def class_counts_on_disk(root: Path) -> dict[str, int]:
    """Images per class folder, as a fresh scan finds them."""
    return totals(scan_dataset(root, 0.25, 0).class_counts())


def totals(class_counts: list[dict]) -> dict[str, int]:
    return {row["class"]: row["train"] + row["val"] for row in class_counts}


class FeatureNote(Callbacks):
    def __init__(self):
        self.note = ""

    def on_run_started(self, event):
        self.note = event.feature_cache


def head_only(data: Path, out: Path, weights: Path) -> RunConfig:
    # Statistics as loaded: adapted ones (--adapt-norm auto, on) depend on the whole training set, so a
    # relabelled set needs the AdaBN pass and their trunk pass again; the per-file store serves these.
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment="none", val_fraction=0.25),
                     model=ModelConfig("resnet18", str(weights)),
                     plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2),
                     train=TrainConfig(epochs=1, batch_size=8, device="cpu", precision="off", seed=0, adapt_norm="off"),
                     out_dir=str(out))


# --- training on the per-file store --------------------------------------------------------------


def endless_suspects_search(monkeypatch):
    """find_suspects replaced by a search that runs until told to stop; the event it sets says it started."""
    import threading

    from engine.curation import suspects
    from engine.errors import Stopped

    searching = threading.Event()

    def endless(*args, should_stop, **kwargs):
        searching.set()
        while not should_stop():
            searching.wait(0.01)
        raise Stopped

    monkeypatch.setattr(suspects, "find_suspects", endless)
    return searching


def count_trunk_passes(monkeypatch) -> list[str]:
    """The image paths training sends through the trunk, from now on (a list that fills as it runs)."""
    through_trunk: list[str] = []
    real_compute = run_setup.compute_features

    def counting(model, head, loader, *args, **kwargs):
        through_trunk.extend(sample.path for sample in loader.dataset.samples)
        return real_compute(model, head, loader, *args, **kwargs)

    monkeypatch.setattr(run_setup, "compute_features", counting)
    return through_trunk


@pytest.mark.slow
def test_after_relabelling_ten_files_the_head_retrains_with_no_trunk_pass(tmp_path, resnet18_weights_file,
                                                                         monkeypatch, one_intra_op_thread):
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))  # nothing cached by other tests
    data = tiny_dataset(tmp_path / "data")
    through_trunk = count_trunk_passes(monkeypatch)
    first = FeatureNote()
    fit(head_only(data, tmp_path / "first", resnet18_weights_file), first)
    assert len(through_trunk) == 24 and "trunk run on 24 of 24" in first.note

    moved = sorted((data / "circle").glob("*.png"))[:5] + sorted((data / "square").glob("*.png"))[:5]
    relabel(data, moved, "triangle")
    assert class_counts_on_disk(data) == {"circle": 3, "square": 3, "triangle": 18}

    through_trunk.clear()
    second = FeatureNote()
    result = fit(head_only(data, tmp_path / "second", resnet18_weights_file), second)
    assert through_trunk == [] and "trunk run on 0 of 24" in second.note
    recorded = RunFolder(result.run_dir).read_record()["dataset"]["classes"]  # what the run trained on
    assert totals(recorded) == {"circle": 3, "square": 3, "triangle": 18}


# --- the window ----------------------------------------------------------------------------------


def table_counts(win) -> list[dict]:
    """The data panel's class table as the scan's class_counts() rows."""
    model = win.data_panel.class_model
    return [{"class": model.index(r, 0).data(), "train": int(model.index(r, 1).data().replace(",", "")),
             "val": int(model.index(r, 2).data().replace(",", ""))} for r in range(model.rowCount())]


def fresh_scan_counts(win, data: Path) -> list[dict]:
    config = win.session.config()
    return scan_dataset(data, config.data.val_fraction, config.train.seed).class_counts()


def wait_listed(qtbot, win, data: Path, expected: dict[str, int]) -> None:
    """Until the class table shows `expected` totals; then it must be what a fresh scan of the folder says."""
    qtbot.waitUntil(lambda: win.session.dataset.scan is not None and totals(table_counts(win)) == expected,
                    timeout=30_000)
    assert table_counts(win) == fresh_scan_counts(win, data)


def a_run_that_predicted_every_image(win, data: Path) -> RunFolder:
    """A run folder (no training) whose validation predictions are every image, each predicted right."""
    import torch

    from app.session_state import WINDOW_DEFAULTS
    from dataclasses import replace
    from engine.runs.predictions import prediction_records, write_predictions

    scan = scan_dataset(data, 0.0, 0)
    paths = [Path(s.path).relative_to(data).as_posix() for s in scan.train]
    labels = torch.tensor([s.label for s in scan.train])
    logits = torch.nn.functional.one_hot(labels, 3).float() * 4 + torch.rand(len(labels), 3)
    folder = RunFolder(win.runs_root() / "predicted")
    config = replace(WINDOW_DEFAULTS, data=replace(WINDOW_DEFAULTS.data, root=str(data))).to_dict()
    folder.write_record({"config": config, "class_names": list(scan.class_names), "status": "finished"})
    write_predictions(folder.predictions_path, prediction_records(paths, labels, logits, list(scan.class_names)))
    return folder


def menu_action(menu, text: str):
    return next(action for action in menu.actions() if action.text() == text)


@pytest.mark.slow
def test_gallery_images_moved_to_another_class_then_undone_and_redone(qtbot, window, tmp_path):
    from PySide6.QtCore import QItemSelectionModel

    data = tiny_dataset(tmp_path / "data")
    original = tree(data)
    window.open_folder(str(data))
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})
    window.session.insight.open_insight(a_run_that_predicted_every_image(window, data))
    insight, gallery = window.insight, window.insight.gallery
    qtbot.waitUntil(lambda: insight.matrix_model.rowCount() == 3, timeout=20_000)
    insight.show_cell(0, 0)  # circle predicted as circle: its 8 images
    assert gallery.model().rowCount() == 8
    for row in (0, 2, 5):
        gallery.selectionModel().select(gallery.model().index(row), QItemSelectionModel.SelectionFlag.Select)
    chosen = [Path(p).relative_to(data.resolve()).as_posix() for p in gallery.selected_paths()]
    assert len(chosen) == 3

    menu_action(insight.mend.move_menu, "triangle").trigger()
    wait_listed(qtbot, window, data, {"circle": 5, "square": 8, "triangle": 11})
    moved = {**{p: h for p, h in original.items() if p not in chosen},
             **{f"triangle/{Path(p).name}": original[p] for p in chosen}}
    assert tree(data) == moved  # the same bytes, under their new class
    assert sorted(r.true for r in gallery.model().records()).count("triangle") == 3  # rows follow their files
    assert window.undo_action.isEnabled() and "Move 3 image(s) to triangle" in window.session.history.undoText()
    insight.show_cell(0, 0)  # the cell again: what the run saw, its images found where they are now
    assert sorted(Path(r.path).parent.name for r in gallery.model().records()).count("triangle") == 3

    window.undo_action.trigger()
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})
    assert tree(data) == original
    assert {r.true for r in gallery.model().records()} == {"circle"}

    window.redo_action.trigger()
    wait_listed(qtbot, window, data, {"circle": 5, "square": 8, "triangle": 11})
    assert tree(data) == moved


@pytest.mark.slow
def test_suspects_found_in_the_background_are_excluded_and_brought_back(qtbot, window, tmp_path,
                                                                         resnet18_weights_file):
    data = tiny_dataset(tmp_path / "data")
    original = tree(data)
    session = window.session
    session.settings.set_arch("resnet18")
    session.settings.set_weights(str(resnet18_weights_file))
    session.settings.update_data({"image_size": 32})
    session.settings.update_train({"device": "cpu"})
    window.open_folder(str(data))
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})
    view = window.suspects_view
    with qtbot.waitSignal(window.session.mending.suspect_finder.found, timeout=60_000):
        view.find_button.click()
        assert not view.find_button.isEnabled() and view.stop_button.isEnabled()  # busy, off the GUI thread
    model = view.model
    assert model.rowCount() == 24 and "out-of-sample" in view.note.text()  # the source is said
    probabilities = [model.suspect(r)["probability"] for r in range(24)]
    assert probabilities == sorted(probabilities)  # most suspect first
    qtbot.waitUntil(lambda: model.thumbnails.cache.get(model.absolute_path(0)) is not None, timeout=20_000)

    view.table.selectRow(0)
    view.table.selectionModel().select(model.index(1, 0), view.table.selectionModel().SelectionFlag.Select
                                       | view.table.selectionModel().SelectionFlag.Rows)
    chosen = [model.suspect(r) for r in (0, 1)]
    view.mend.exclude_button.click()
    expected = {name: 8 - sum(s["given"] == name for s in chosen) for name in ("circle", "square", "triangle")}
    wait_listed(qtbot, window, data, expected)
    excluded = {f"_excluded/{s['given']}/{Path(s['path']).name}": original[s["path"]] for s in chosen}
    assert tree(data) == {**{p: h for p, h in original.items() if p not in {s["path"] for s in chosen}}, **excluded}
    assert [model.suspect(r)["given"] for r in (0, 1)] == ["excluded", "excluded"]  # rows follow their files

    window.undo_action.trigger()
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})
    assert tree(data) == original and [model.suspect(r)["path"] for r in (0, 1)] == [s["path"] for s in chosen]


@pytest.mark.slow
def test_opening_a_dataset_notes_what_a_crash_left_half_done_and_moves_nothing(qtbot, window, tmp_path, monkeypatch):
    from engine.curation import dataset_edits

    data = tiny_dataset(tmp_path / "data")
    original = tree(data)

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies after the journal entry, before any file moves

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(dataset_edits, "move_file", crash)
        relabel(data, ["circle/circle_0000.png", "circle/circle_0001.png"], "square")
    assert tree(data) == original  # half-done: planned, nothing moved yet

    window.open_folder(str(data))
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})  # opening only reads (issue 22)
    assert "half-done" in window.statusBar().currentMessage()
    assert tree(data) == original  # nothing moved: the next edit completes it


# --- train --folds -------------------------------------------------------------------------------


def test_fold_scans_hold_every_image_out_once_with_every_class_in_every_fold(tmp_path):
    from engine.training.folds import fold_scans

    scan = scan_dataset(tiny_dataset(tmp_path / "data"), 0.25, 0)
    scans = fold_scans(scan, 3, seed=0)
    held = [s.path for fold in scans for s in fold.val]
    assert sorted(held) == sorted(s.path for s in scan.train + scan.val)  # each image exactly once
    for fold in scans:
        assert {s.label for s in fold.val} == {0, 1, 2} and not {s.path for s in fold.val} & {s.path for s in fold.train}
        assert len(fold.train) + len(fold.val) == 24


@pytest.mark.slow
def test_train_folds_reports_each_fold_and_mean_and_std_with_one_trunk_pass(tmp_path, resnet18_weights_file,
                                                                           monkeypatch, capsys, one_intra_op_thread):
    import json
    import statistics

    from app.cli import main

    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "data")
    through_trunk = count_trunk_passes(monkeypatch)
    out = tmp_path / "cv"
    code = main(["train", "--data", str(data), "--weights", str(resnet18_weights_file), "--strategy",
                 "feature-extraction", "--augment", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
                 "--device", "cpu", "--precision", "off", "--base-lr", "0.01", "--folds", "3", "--out", str(out),
                 # off: auto would measure adapted statistics on the first fold, a second trunk pass
                 "--adapt-norm", "off", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    report = json.loads(lines[-1])
    assert [f["fold"] for f in report["folds"]] == [1, 2, 3] and report["complete"]
    assert sum(f["val_images"] for f in report["folds"]) == 24
    accuracies = [f["val_accuracy"] for f in report["folds"]]
    assert all(0 <= a <= 1 for a in accuracies)
    assert report["mean_val_accuracy"] == pytest.approx(statistics.fmean(accuracies))
    assert report["std_val_accuracy"] == pytest.approx(statistics.stdev(accuracies))
    assert [line.split(":")[0] for line in lines[:3]] == ["fold 1/3", "fold 2/3", "fold 3/3"]
    assert "mean ± standard deviation over 3 folds" in lines[3]
    assert sorted(through_trunk) == sorted(str(p) for p in data.rglob("*.png"))  # the trunk ran once per image
    assert json.loads((out / "folds.json").read_text()) == report
    assert all((out / f"fold-{k}" / "run.json").is_file() for k in (1, 2, 3))


@pytest.mark.parametrize("flags, said", [(["--folds", "9"], "smallest class has 8"),
                                         (["--folds", "3", "--resume", "x"], "cannot continue")])
def test_train_folds_refuses_what_cannot_work_in_one_line(tmp_path, capsys, flags, said):
    from app.cli import main

    data = tiny_dataset(tmp_path / "data")
    code = main(["train", "--data", str(data), "--weights", "none", "--device", "cpu", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and said in err[0] and err[0].startswith("transfer-studio: error:")


# --- the views and the finder on their own -------------------------------------------------------


def test_the_suspects_model_passes_the_model_tester_and_rows_follow_their_files(qtmodeltester, tmp_path):
    from PySide6.QtCore import Qt

    from widgets.suspects_view import SuspectsModel

    from PySide6.QtGui import QImage

    model = SuspectsModel()
    wanted = []
    model.thumbnails_wanted.connect(wanted.append)
    rows = [{"path": "cat/a.png", "given": "cat", "likely": "dog", "probability": 0.1},
            {"path": "dog/b.png", "given": "dog", "likely": "dog", "probability": 0.9}]
    model.set_suspects(rows, str(tmp_path))
    qtmodeltester.check(model)
    assert wanted == [[str(tmp_path / "cat/a.png"), str(tmp_path / "dog/b.png")]]
    decoded = QImage(4, 4, QImage.Format.Format_RGB32)
    model.add_thumbnails({str(tmp_path / "cat/a.png"): decoded, str(tmp_path / "dog/b.png"): None})
    assert model.index(0, 0).data(Qt.ItemDataRole.DecorationRole) == decoded
    placeholder = model.index(1, 0).data(Qt.ItemDataRole.DecorationRole)  # did not decode: the placeholder
    assert placeholder is not None and placeholder.width() > 4
    wanted.clear()
    model.apply_moves(str(tmp_path), [("cat/a.png", "dog/a.png"), ("dog/b.png", "_excluded/dog/b.png")])
    assert [(model.suspect(r)["path"], model.suspect(r)["given"]) for r in (0, 1)] == [
        ("dog/a.png", "dog"), ("_excluded/dog/b.png", "excluded")]
    assert wanted == [[str(tmp_path / "dog/a.png"), str(tmp_path / "_excluded/dog/b.png")]]  # new names
    model.apply_moves(str(tmp_path / "elsewhere"), [("dog/a.png", "cat/a.png")])  # another dataset's files
    assert model.suspect(0)["path"] == "dog/a.png"


def test_stop_ends_a_suspects_search_in_progress(qtbot, monkeypatch, tmp_path):
    from app.data_edit_session import SuspectFinder
    from app.worker import BackgroundTasks

    searching = endless_suspects_search(monkeypatch)
    tasks = BackgroundTasks()
    finder = SuspectFinder(tasks)
    try:
        with qtbot.waitSignal(finder.failed, timeout=10_000) as failed:
            finder.find(RunConfig(), str(tmp_path), None)
            qtbot.waitUntil(searching.is_set, timeout=5_000)
            finder.stop()
        assert failed.args == ["Stopped."]
    finally:
        tasks.shutdown()


@pytest.mark.slow
def test_images_are_not_moved_while_a_run_trains(qtbot, window, tmp_path):
    data = tiny_dataset(tmp_path / "data")
    original = tree(data)
    session = window.session
    session.settings.set_weights("none")
    session.settings.update_data({"image_size": 32})
    session.settings.update_train({"epochs": 200, "batch_size": 8, "device": "cpu"})
    session.plan.apply_preset("feature-extraction")
    window.open_folder(str(data))
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})
    qtbot.waitUntil(lambda: window.is_ready, timeout=30_000)
    with qtbot.waitSignal(window.controller.run_started, timeout=60_000):
        window.session.runs.start()
    session.mending.relabel_images([str(data / "circle" / "circle_0000.png")], "square")
    assert "A run is in progress" in window.statusBar().currentMessage()
    session.mending.exclude_images([str(data / "circle" / "circle_0001.png")])
    assert "A run is in progress" in window.statusBar().currentMessage()
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000):
        window.session.runs.stop()
    assert tree(data) == original and not (data / JOURNAL_NAME).exists()


@pytest.fixture
def one_window_move(qtbot, tmp_path):
    """A tiny dataset, the window's data edits on their own undo stack, and one image moved there."""
    from PySide6.QtGui import QUndoStack

    from app.data_edit_session import DataEdits
    from app.worker import BackgroundTasks

    data = tiny_dataset(tmp_path / "data")
    tasks = BackgroundTasks()
    stack = QUndoStack()
    edits = DataEdits(tasks, stack)
    try:
        with qtbot.waitSignal(edits.edited, timeout=10_000):
            edits.relabel(str(data), [str(data / "circle" / "circle_0000.png")], "square")
        yield data, stack, edits
    finally:
        tasks.shutdown()


def test_undo_never_takes_back_an_edit_made_outside_the_window(qtbot, one_window_move):
    data, stack, edits = one_window_move
    relabel(data, ["circle/circle_0001.png"], "triangle")  # the command line, meanwhile
    after_both = tree(data)
    index = stack.index()
    notices = []
    edits.failed.connect(notices.append)
    with qtbot.waitSignal(edits.failed, timeout=10_000) as failed:
        stack.undo()
    assert "changed outside this window" in failed.args[0] and tree(data) == after_both
    qtbot.waitUntil(lambda: stack.index() == index, timeout=5_000)  # the stack back in step: nothing undone
    assert stack.canUndo() and not stack.canRedo() and "Move 1 image(s) to square" in stack.undoText()
    qtbot.wait(200)
    assert len(notices) == 1 and tree(data) == after_both  # putting the index back redid nothing


def test_a_second_edit_asked_for_while_one_is_made_is_refused(qtbot, tmp_path, monkeypatch):
    import threading

    from PySide6.QtGui import QUndoStack

    from app.data_edit_session import BUSY, DataEdits
    from app.worker import BackgroundTasks
    from engine.curation import dataset_edits

    data = tiny_dataset(tmp_path / "data")
    gate = threading.Event()
    real_relabel = dataset_edits.relabel
    monkeypatch.setattr(dataset_edits, "relabel", lambda *args: gate.wait(10) and real_relabel(*args))
    tasks = BackgroundTasks()
    stack = QUndoStack()
    edits = DataEdits(tasks, stack)
    try:
        edits.relabel(str(data), [str(data / "circle" / "circle_0000.png")], "square")  # held at the gate
        with qtbot.waitSignal(edits.failed, timeout=5_000) as failed:
            edits.exclude(str(data), [str(data / "circle" / "circle_0001.png")])
        assert failed.args == [BUSY]
        with qtbot.waitSignal(edits.edited, timeout=10_000):
            gate.set()
        assert [a.kind for a in dataset_edits.history(data)[0]] == ["relabel"] and stack.count() == 1
        assert (data / "circle" / "circle_0001.png").is_file()
    finally:
        tasks.shutdown()


def held_moves(monkeypatch):
    """Patch the journal's file moves to wait at a gate: (the event set once a move waits, the gate)."""
    import threading

    from engine.curation import dataset_edits

    moving, gate = threading.Event(), threading.Event()
    real_move = dataset_edits.move_file

    def held(src, dst):
        moving.set()
        gate.wait(10)
        real_move(src, dst)

    monkeypatch.setattr(dataset_edits, "move_file", held)
    return moving, gate


def test_reopening_a_dataset_while_its_files_move_lists_nothing_until_the_move_is_done(qtbot, tmp_path,
                                                                                      monkeypatch):
    import json

    from PySide6.QtGui import QUndoStack

    from app.data_edit_session import DataEdits
    from app.worker import BackgroundTasks

    data = tiny_dataset(tmp_path / "data")
    moving, gate = held_moves(monkeypatch)
    tasks = BackgroundTasks()
    edits = DataEdits(tasks, QUndoStack())
    listed, notices = [], []
    edits.noted.connect(notices.append)
    edits.failed.connect(notices.append)
    try:
        edits.relabel(str(data), [str(data / "circle" / "circle_0000.png")], "square")
        qtbot.waitUntil(moving.is_set, timeout=5_000)  # the planned entry is written, the file not moved yet
        edits.check_journal(str(data), lambda: listed.append(True))  # the same dataset opened again, meanwhile
        assert edits.busy
        qtbot.wait(300)  # time enough for a look beside the move to see it half-done
        assert not listed  # the look waits for the move
        with qtbot.waitSignal(edits.edited, timeout=10_000):
            gate.set()
        qtbot.waitUntil(lambda: listed == [True], timeout=10_000)
        assert notices == [] and not edits.busy
        entries = [json.loads(line) for line in (data / JOURNAL_NAME).read_text().splitlines()]
        assert [(e["id"], e["state"]) for e in entries] == [(1, "planned"), (1, "done")]
        assert (data / "square" / "circle_0000.png").is_file()
    finally:
        gate.set()
        tasks.shutdown()


def test_opening_a_dataset_notes_a_half_done_edit_moves_nothing_and_the_next_edit_completes_it(qtbot, tmp_path,
                                                                                              monkeypatch):
    """Issue 22: merely opening a folder never obeys its journal; the note says what the next edit does."""
    from PySide6.QtGui import QUndoStack

    from app.data_edit_session import DataEdits
    from app.worker import BackgroundTasks
    from engine.curation import dataset_edits

    data = tiny_dataset(tmp_path / "data")
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(dataset_edits, "move_file", lambda src, dst: (_ for _ in ()).throw(KeyboardInterrupt))
        relabel(data, ["circle/circle_0000.png"], "square")  # a crash left it half-done
    tasks = BackgroundTasks()
    edits = DataEdits(tasks, QUndoStack())
    listed = []
    try:
        with qtbot.waitSignal(edits.noted, timeout=10_000) as noted:
            edits.check_journal(str(data), lambda: listed.append(True))
        assert "relabel #1" in noted.args[0] and "next relabel, exclude, undo or redo completes it" in noted.args[0]
        qtbot.waitUntil(lambda: listed == [True], timeout=5_000)
        assert (data / "circle" / "circle_0000.png").is_file() and not (data / "square" / "circle_0000.png").exists()
        assert not edits.busy
        with qtbot.waitSignal(edits.edited, timeout=10_000):
            edits.exclude(str(data), [str(data / "circle" / "circle_0001.png")])
        assert (data / "square" / "circle_0000.png").is_file()  # the edit completed the half-done relabel first
    finally:
        tasks.shutdown()


def test_a_refused_redo_leaves_the_edit_undone_on_the_stack(qtbot, one_window_move):
    from engine.curation.dataset_edits import exclude

    data, stack, edits = one_window_move
    with qtbot.waitSignal(edits.edited, timeout=10_000):
        stack.undo()
    exclude(data, ["square/square_0000.png"])  # the command line: a new action ends the redo chain
    with qtbot.waitSignal(edits.failed, timeout=10_000):
        stack.redo()
    qtbot.waitUntil(lambda: stack.index() == 0, timeout=5_000)
    assert stack.canRedo() and "Move 1 image(s) to square" in stack.redoText()
    assert (data / "circle" / "circle_0000.png").is_file()


def test_the_suspects_panel_asks_for_moves_and_exclusions_of_the_selected_rows(qtbot, tmp_path):
    from types import SimpleNamespace

    from widgets.suspects_view import SuspectsView

    view = SuspectsView()
    qtbot.addWidget(view)
    rows = [{"path": f"cat/{n}.png", "given": "cat", "likely": "dog", "probability": 0.1} for n in "ab"]
    view.show_report(SimpleNamespace(suspects=rows, note="found", duplicates=[]), str(tmp_path))
    view.set_class_names(["cat", "dog"])
    view.table.selectRow(1)
    with qtbot.waitSignal(view.move_requested, timeout=1_000) as moved:
        menu_action(view.mend.move_menu, "dog").trigger()
    assert moved.args == [[str(tmp_path / "cat" / "b.png")], "dog"]
    with qtbot.waitSignal(view.exclude_requested, timeout=1_000) as excluded:
        view.mend.exclude_button.click()
    assert excluded.args == [[str(tmp_path / "cat" / "b.png")]]


@pytest.mark.slow
def test_no_run_starts_while_suspects_are_being_found(qtbot, window, tmp_path, monkeypatch):
    from app.runs_controller import SEARCHING

    searching = endless_suspects_search(monkeypatch)
    data = tiny_dataset(tmp_path / "data")
    session = window.session
    session.settings.set_weights("none")
    session.settings.update_data({"image_size": 32})
    session.settings.update_train({"epochs": 1, "batch_size": 8, "device": "cpu"})
    window.open_folder(str(data))
    wait_listed(qtbot, window, data, {"circle": 8, "square": 8, "triangle": 8})
    qtbot.waitUntil(lambda: window.is_ready, timeout=30_000)
    window.suspects_view.find_button.click()
    qtbot.waitUntil(searching.is_set, timeout=5_000)
    assert session.runs.start_problem() == SEARCHING
    with qtbot.waitSignal(session.messages.error_raised, timeout=5_000) as refused:
        window.session.runs.start()
    assert refused.args == [SEARCHING] and not session.is_running
    with qtbot.waitSignal(session.mending.suspect_finder.failed, timeout=10_000):
        window.suspects_view.stop_button.click()
    assert session.runs.start_problem() != SEARCHING and window.suspects_view.note.text() == "Stopped."
