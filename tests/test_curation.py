"""Mending the data (issue 12): suspect labels ranked, near-duplicates paired, relabel / exclude /
undo / redo journalled so that a crash is repaired and no file is ever lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from engine.curation import dataset_edits
from engine.curation import suspects
from engine.data.dataset import list_dataset, scan_dataset
from engine.curation.dataset_edits import JOURNAL_NAME, exclude, history, redo, relabel, repair, undo
from engine.errors import UserError
from engine.runs.predictions import PredictionRecord, write_predictions
from engine.runs.run_folder import RunFolder
from engine.curation.suspects import find_suspects, near_duplicates
from engine.data.dataset import fold_of
from tests.helpers import COLOURS, PER_CLASS, SIZE, Crash, contents, tree, write_colours

ROOT = Path(__file__).resolve().parents[1]
# Planted mistakes: (file's true class, folder it is put in, index).
FLIPS = (("red", "green", 0), ("green", "blue", 1), ("blue", "red", 2))


def flip_labels(root: Path) -> set[str]:
    flipped = set()
    for true, wrong, i in FLIPS:
        os.rename(root / true / f"{true}_{i}.png", root / wrong / f"{true}_{i}.png")
        flipped.add(f"{wrong}/{true}_{i}.png")
    return flipped


@pytest.fixture
def colours(tmp_path) -> Path:
    return write_colours(tmp_path / "colours")


# --- suspects ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flipped_labels_rank_first(colours, resnet18_weights_file):
    flipped = flip_labels(colours)
    report = find_suspects(colours, "resnet18", str(resnet18_weights_file), folds=4, image_size=SIZE)
    assert report.source == suspects.FEATURES and len(report.suspects) == len(COLOURS) * PER_CLASS
    top = report.suspects[:len(flipped)]
    assert len({s["path"] for s in top} & flipped) >= len(flipped) - 1  # most of them, within as many entries
    for s in top:
        if s["path"] in flipped:  # the likely class is the one the image was drawn from
            assert s["likely"] == s["path"].split("/")[1].split("_")[0] and s["given"] == s["path"].split("/")[0]
    probabilities = [s["probability"] for s in report.suspects]
    assert probabilities == sorted(probabilities) and 0 <= probabilities[0] and probabilities[-1] <= 1
    assert set(json.loads(json.dumps(report.to_json()))) >= {"suspects", "duplicates", "source"}


@pytest.mark.slow
def test_near_duplicate_copies_in_two_classes_are_a_pair(colours, resnet18_weights_file):
    original = np.asarray(Image.open(colours / "red" / "red_3.png")).astype(np.int16)
    nudged = np.clip(original + np.random.default_rng(1).integers(-2, 3, original.shape), 0, 255).astype(np.uint8)
    Image.fromarray(nudged).save(colours / "blue" / "copy_of_red_3.png")
    report = find_suspects(colours, "resnet18", str(resnet18_weights_file), folds=3, image_size=SIZE,
                           threshold=0.9995)
    pairs = [frozenset(p[:2]) for p in report.duplicates]
    assert frozenset({"red/red_3.png", "blue/copy_of_red_3.png"}) in pairs
    assert report.duplicates[0][2] >= 0.9995


@pytest.mark.slow
def test_features_come_from_the_disk_cache_the_second_time(colours, resnet18_weights_file, monkeypatch):
    first = find_suspects(colours, "resnet18", str(resnet18_weights_file), folds=3, image_size=SIZE)
    calls = []
    monkeypatch.setattr(suspects, "compute_features", lambda *a, **k: calls.append(1))
    second = find_suspects(colours, "resnet18", str(resnet18_weights_file), folds=3, image_size=SIZE)
    assert calls == [] and second == first  # same features, same seeded folds: the same report


@pytest.mark.slow
def test_relabelling_10_files_needs_no_trunk_pass(colours, resnet18_weights_file, monkeypatch):
    real, computed = suspects.compute_features, []

    def counting(model, head, loader, *args, **kwargs):
        computed.append(len(loader.dataset))  # images the trunk runs on
        return real(model, head, loader, *args, **kwargs)

    monkeypatch.setattr(suspects, "compute_features", counting)
    find_suspects(colours, "resnet18", str(resnet18_weights_file), folds=3, image_size=SIZE)
    assert sum(computed) == len(COLOURS) * PER_CLASS
    relabel(colours, [f"red/red_{i}.png" for i in range(5)], "green")
    relabel(colours, [f"blue/blue_{i}.png" for i in range(5)], "red")
    counts = {c["class"]: c["train"] + c["val"] for c in scan_dataset(colours).class_counts()}
    assert counts == {"blue": 3, "green": 13, "red": 8}  # the new scan shows the new counts
    computed.clear()
    report = find_suspects(colours, "resnet18", str(resnet18_weights_file), folds=3, image_size=SIZE)
    assert computed == [] and len(report.suspects) == len(COLOURS) * PER_CLASS
    given = {s["path"]: s["given"] for s in report.suspects}
    assert given["green/red_0.png"] == "green" and given["red/blue_4.png"] == "red"  # the new labels


def test_the_per_file_store_computes_only_files_it_lacks(colours):
    import torch

    from engine.data.dataset import Sample
    from engine.model.features import features_per_file

    asked = []

    def compute(missing):  # a stand-in trunk: the feature is the file's size; "bad" files fail
        asked.append([Path(s.path).name for s in missing])
        failed = {n for n, s in enumerate(missing) if "bad" in s.path}
        sizes = [[float(os.path.getsize(s.path))] for n, s in enumerate(missing) if n not in failed]
        return torch.tensor(sizes), failed

    (colours / "red" / "bad.png").write_bytes(b"x")
    samples = [Sample(str(p), 0) for p in sorted((colours / "red").glob("*.png"))]
    feats, positions, _ = features_per_file(samples, "trunk-a", compute)
    assert len(asked[-1]) == PER_CLASS + 1 and len(positions) == PER_CLASS and "bad.png" in asked[-1]
    os.rename(colours / "red" / "red_0.png", colours / "green" / "red_0.png")  # a move keeps the identity
    os.utime(colours / "red" / "red_1.png", ns=(1, 1))  # an edit in place does not
    moved = [Sample(str(colours / "green" / "red_0.png"), 1) if s.path.endswith("red_0.png") else s for s in samples]
    again, positions_again, _ = features_per_file(moved, "trunk-a", compute)
    assert asked[-1] == ["bad.png", "red_1.png"] and torch.equal(again, feats)
    features_per_file(moved, "trunk-b", compute)  # another trunk: another store
    assert len(asked[-1]) == PER_CLASS + 1


def test_folds_are_seeded_and_stratified():
    import torch

    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    folds = fold_of(labels, 5, seed=3)
    assert torch.equal(folds, fold_of(labels, 5, seed=3)) and not torch.equal(folds, fold_of(labels, 5, seed=4))
    for label in range(3):  # every class spread evenly over the folds
        counts = torch.bincount(folds[labels == label], minlength=5)
        assert int(counts.max() - counts.min()) <= 1


def test_duplicates_only_across_classes_or_splits():
    import torch

    feats = torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.0, 1.0001]])
    labels = torch.tensor([0, 1, 2, 2])
    same_split = torch.tensor([False, False, False, False])
    assert [p[:2] for p in near_duplicates(feats, labels, same_split, 0.99)] == [(0, 1)]
    across_split = torch.tensor([False, False, False, True])
    assert sorted(p[:2] for p in near_duplicates(feats, labels, across_split, 0.99)) == [(0, 1), (2, 3)]


def test_without_usable_features_the_validation_predictions_are_ranked(colours, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_record({"config": {}})
    records = [PredictionRecord("red/red_1.png", "red", "red", 0.05, 0.95, (("red", 0.95),)),
               PredictionRecord("green/red_0.png", "green", "red", 3.0, 0.9, (("red", 0.9),)),
               PredictionRecord("blue/blue_1.png", "blue", "blue", 0.5, 0.6, (("blue", 0.6),))]
    write_predictions(run.predictions_path, records)
    report = find_suspects(colours, "resnet18", "none", run_dir=run.path)
    assert report.source == suspects.VALIDATION and "validation" in report.note
    assert [s["path"] for s in report.suspects] == ["green/red_0.png", "blue/blue_1.png", "red/red_1.png"]
    assert report.suspects[0]["probability"] == pytest.approx(np.exp(-3.0), rel=1e-4)
    with pytest.raises(UserError, match="no usable features"):
        find_suspects(colours, "resnet18", "none")


# --- relabel, exclude, undo, redo -------------------------------------------------------------------


def test_relabel_exclude_undo_redo_restore_the_exact_tree(colours):
    Image.new("RGB", (SIZE, SIZE), (0, 255, 0)).save(colours / "green" / "red_4.png")  # a clash for red/red_4.png
    clashing = (colours / "green" / "red_4.png").read_bytes()
    original, every_file = tree(colours), contents(colours)

    def check_nothing_lost():
        assert contents(colours) == every_file

    moved = relabel(colours, ["red/red_4.png", colours / "red" / "red_5.png"], "green")
    check_nothing_lost()
    assert dict(moved.moves) == {"red/red_4.png": "green/red_4 (2).png", "red/red_5.png": "green/red_5.png"}
    assert (colours / "green" / "red_4.png").read_bytes() == clashing  # not overwritten
    counts = {c: len(list((colours / c).glob("*.png"))) for c in COLOURS}
    assert counts == {"red": 6, "green": 11, "blue": 8}

    excluded = exclude(colours, ["blue/blue_0.png", "green/red_5.png"])
    check_nothing_lost()
    assert dict(excluded.moves) == {"blue/blue_0.png": "_excluded/blue/blue_0.png",
                                    "green/red_5.png": "_excluded/green/red_5.png"}
    listing = list_dataset(colours)  # the scan ignores _excluded/
    assert listing.class_names == ("blue", "green", "red") and listing.total == 3 * PER_CLASS + 1 - 2

    undo(colours)
    check_nothing_lost()
    undo(colours)
    check_nothing_lost()
    assert tree(colours) == original
    redo(colours)
    check_nothing_lost()
    assert (colours / "green" / "red_4 (2).png").exists()
    undo(colours)
    assert tree(colours) == original and history(colours)[0] == []
    with pytest.raises(UserError, match="nothing to undo"):
        undo(colours)


def test_a_new_action_ends_the_redo_chain(colours):
    relabel(colours, ["red/red_1.png"], "blue")
    undo(colours)
    exclude(colours, ["red/red_2.png"])
    with pytest.raises(UserError, match="nothing to redo"):
        redo(colours)


@pytest.mark.parametrize("crash_after", [0, 1])
def test_a_crash_between_the_journal_and_the_moves_is_completed_on_the_next_start(colours, monkeypatch,
                                                                                  crash_after):
    original, every_file = tree(colours), contents(colours)
    real_move, done = dataset_edits.move_file, []

    def crashing_move(src, dst):
        if len(done) == crash_after:
            raise Crash
        real_move(src, dst)
        done.append(dst)

    monkeypatch.setattr(dataset_edits, "move_file", crashing_move)
    with pytest.raises(Crash):
        relabel(colours, ["red/red_1.png", "red/red_2.png", "green/green_3.png"], "blue")
    monkeypatch.setattr(dataset_edits, "move_file", real_move)
    assert contents(colours) == every_file
    entries = [json.loads(line) for line in (colours / JOURNAL_NAME).read_text().splitlines()]
    assert [e["state"] for e in entries] == ["planned"]  # written before the first move

    repaired = repair(colours)  # the next start
    assert [a.kind for a in repaired] == ["relabel"] and repair(colours) == []
    assert contents(colours) == every_file
    assert {"blue/red_1.png", "blue/red_2.png", "blue/green_3.png"} <= set(tree(colours))
    undo(colours)
    assert tree(colours) == original


def test_a_crash_between_link_and_unlink_is_repaired(colours, monkeypatch):
    original, every_file = tree(colours), contents(colours)
    real_unlink = os.unlink

    def crash_on_unlink(path, *args, **kwargs):
        raise Crash

    monkeypatch.setattr(dataset_edits.os, "unlink", crash_on_unlink)
    with pytest.raises(Crash):
        exclude(colours, ["green/green_0.png", "green/green_1.png"])
    monkeypatch.setattr(dataset_edits.os, "unlink", real_unlink)
    assert (colours / "green" / "green_0.png").exists() and (colours / "_excluded/green/green_0.png").exists()
    repair(colours)
    assert contents(colours) == every_file
    assert not (colours / "green" / "green_0.png").exists() and (colours / "_excluded/green/green_1.png").exists()
    undo(colours)
    assert tree(colours) == original


def test_a_torn_journal_line_is_ignored(colours):
    relabel(colours, ["red/red_1.png"], "blue")
    with open(colours / JOURNAL_NAME, "a") as fh:
        fh.write('{"state": "planned", "id": 2, "kin')  # the crash came while writing it: nothing moved
    assert repair(colours) == []
    undo(colours)
    assert (colours / "red" / "red_1.png").exists()


# --- command line -----------------------------------------------------------------------------------


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_relabel_exclude_undo_redo_one_line_each(colours, capsys):
    original = tree(colours)
    for args in (("relabel", colours, "red/red_1.png", colours / "red" / "red_2.png", "--to", "green"),
                 ("exclude", colours, "blue/blue_3.png"), ("undo", colours), ("redo", colours),
                 ("undo", colours), ("undo", colours)):
        code, out, err = run_cli(capsys, *args)
        assert code == 0 and len(out.strip().splitlines()) == 1 and err == "", (args, out, err)
    assert tree(colours) == original


@pytest.mark.slow
def test_cli_suspects_json(colours, resnet18_weights_file, capsys):
    flipped = flip_labels(colours)
    code, out, _ = run_cli(capsys, "suspects", "--data", colours, "--model", "resnet18", "--weights",
                           resnet18_weights_file, "--folds", "4", "--image-size", SIZE, "--json")
    report = json.loads(out)
    assert code == 0 and {"suspects", "duplicates"} <= set(report)
    assert len({s["path"] for s in report["suspects"][:3]} & flipped) >= 2
    assert all(set(s) == {"path", "given", "likely", "probability"} for s in report["suspects"])


@pytest.mark.parametrize("args, message", [
    (("relabel", "DATA", "/etc/hostname", "--to", "red"), "outside the dataset folder"),
    (("relabel", "DATA", "../elsewhere.png", "--to", "red"), "outside the dataset folder"),
    (("relabel", "DATA", "red/red_1.png", "--to", "purple"), "unknown class 'purple'"),
    (("relabel", "DATA", "red/red_1.png", "--to", "_excluded"), "unknown class"),
    (("relabel", "DATA", "red/red_1.png", "--to", "red"), "already in class red"),
    (("relabel", "DATA", "red/missing.png", "--to", "blue"), "no such file"),
    (("exclude", "DATA", "red/missing.png"), "no such file"),
    (("exclude", "DATA", "red"), "no such file"),
    (("exclude", "/nonexistent/folder", "x.png"), "dataset folder not found"),
    (("undo", "DATA"), "nothing to undo"),
    (("redo", "DATA"), "nothing to redo"),
    (("suspects", "--data", "DATA", "--model", "resnet18", "--weights", "none"), "no usable features"),
    (("suspects", "--data", "DATA", "--model", "resnet19", "--weights", "none"), "unknown architecture"),
    (("suspects", "--data", "DATA", "--model", "resnet18", "--device", "abacus"), "device 'abacus'"),
    (("suspects", "--data", "DATA/red", "--model", "resnet18"), "at least 2 class"),
])
def test_cli_bad_input_is_one_line_exit_2(colours, capsys, args, message):
    before = tree(colours)
    args = [a.replace("DATA", str(colours)) for a in args]
    code, out, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("transfer-studio: error:") and message in lines[0]
    assert tree(colours) == before


@pytest.mark.slow
def test_cli_bad_number_and_no_traceback_in_a_real_process(colours):
    proc = subprocess.run([sys.executable, "-m", "app", "suspects", "--data", str(colours), "--model", "resnet18",
                           "--folds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "folds" in lines[-1]


def test_undo_after_a_file_was_moved_by_hand_moves_nothing(colours):
    relabel(colours, ["red/red_1.png", "red/red_2.png"], "blue")
    os.rename(colours / "blue" / "red_2.png", colours / "green" / "red_2.png")
    before = tree(colours)
    with pytest.raises(UserError, match="no longer in"):
        undo(colours)
    assert tree(colours) == before and repair(colours) == []


def test_train_val_layout_moves_within_the_split(tmp_path):
    root = tmp_path / "split"
    write_colours(root / "train")
    write_colours(root / "val", seed=1)
    original = tree(root)
    moved = relabel(root, ["val/red/red_1.png"], "blue")
    excluded = exclude(root, ["train/green/green_2.png"])
    assert moved.moves == (("val/red/red_1.png", "val/blue/red_1.png"),)
    assert excluded.moves == (("train/green/green_2.png", "_excluded/train/green/green_2.png"),)
    listing = list_dataset(root)
    assert listing.layout == "train-val" and len(listing.samples) == 23 and len(listing.given_val) == 24
    undo(root)
    undo(root)
    assert tree(root) == original
