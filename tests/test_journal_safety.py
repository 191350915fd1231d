"""The dataset's edit journal is data from disk, not instructions (issue 22, items 1-4): hostile
entries are refused whole before anything moves, a journal that is a link or a pipe is refused
without following or waiting on it, a repair never records a move it did not make, and edits of
one dataset run one at a time."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from app.cli import main
from engine.curation import dataset_edits
from engine.curation.dataset_edits import JOURNAL_NAME, history, pending, relabel, repair, undo
from engine.errors import UserError
from tests.helpers import Crash, contents, tree, write_colours

needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="symlinks, pipes and flock of POSIX")


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_colours(tmp_path / "D")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder of the person's, beside the dataset, with a file nobody may move."""
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "secret").write_text("mine")
    return folder


def journal_with(dataset: Path, *entries: dict) -> None:
    (dataset / JOURNAL_NAME).write_text("".join(json.dumps(e) + "\n" for e in entries))


def planned(moves, kind="relabel", state="planned", id=1, target="red") -> dict:
    return {"state": state, "id": id, "kind": kind, "moves": moves, "target": target, "of": None}


def hostile_journals(outside: Path) -> list[dict]:
    return [
        planned([[str(outside / "secret"), "red/s.png"]]),  # an absolute source: pulls a file in
        planned([["green/green_1.png", str(outside / "x.png")]]),  # an absolute target: pushes one out
        planned([["../home/secret", "red/s.png"]]),  # a relative way out
        planned([["green", "red/green"]]),  # a whole class folder renamed
        planned([["red/../../home/secret", "red/s.png"]]),  # not normalized
        planned([["green/green_1.png", "_excluded/green/green_1.png"]], kind="relabel"),  # not what a relabel does
        planned([["green/green_1.png", "red/x.png"]], kind="rm -rf"),
        planned([[str(outside / "secret"), "red/s.png"]], kind="undo", state="done"),  # a done entry, for undo
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_hostile_entry_refuses_the_whole_journal_and_moves_nothing(dataset, outside, case):
    before = tree(dataset)
    journal_with(dataset, hostile_journals(outside)[case])
    for step in (repair, undo, lambda d: relabel(d, ["blue/blue_1.png"], "red"), history, pending):
        with pytest.raises(UserError) as info:
            step(dataset)
        assert "journal" in str(info.value) and "refused" in str(info.value) and "\n" not in str(info.value)
    assert tree(dataset) == before
    assert (outside / "secret").read_text() == "mine" and sorted(p.name for p in outside.iterdir()) == ["secret"]


@needs_posix
def test_a_class_folder_that_leads_outside_is_refused(dataset, outside):
    os.symlink(outside, dataset / "linked")  # a "class" whose files live elsewhere
    journal_with(dataset, planned([["linked/secret", "red/secret"]]))
    with pytest.raises(UserError, match="outside the dataset"):
        repair(dataset)
    assert (outside / "secret").read_text() == "mine"


def test_suspects_reads_only_and_refuses_a_hostile_journal_in_one_line(dataset, outside, capsys):
    """The issue's reproduction: `suspects` used to obey the journal before reading anything."""
    before = tree(dataset)
    journal_with(dataset, planned([[str(outside / "secret"), "red/s.png"], ["blue/blue_1.png", str(outside / "1.png")]]))
    assert main(["suspects", "--data", str(dataset), "--model", "resnet18", "--weights", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "Traceback" not in err[0]
    assert tree(dataset) == before and sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_reading_never_repairs_a_half_done_action(dataset, monkeypatch):
    real_move = dataset_edits.move_file

    def crash(src, dst):
        raise Crash

    monkeypatch.setattr(dataset_edits, "move_file", crash)
    with pytest.raises(Crash):
        relabel(dataset, ["red/red_1.png"], "blue")
    monkeypatch.setattr(dataset_edits, "move_file", real_move)
    before = tree(dataset)
    assert [a.id for a in pending(dataset)] == [1] and history(dataset) == ([], [])
    assert tree(dataset) == before  # reading moved nothing
    assert [a.id for a in repair(dataset)] == [1] and (dataset / "blue/red_1.png").exists()


@needs_posix
def test_a_journal_that_is_a_link_is_refused_and_its_target_untouched(dataset, outside):
    os.symlink(outside / "secret", dataset / JOURNAL_NAME)
    for step in (lambda: relabel(dataset, ["red/red_1.png"], "blue"), lambda: undo(dataset), lambda: history(dataset)):
        with pytest.raises(UserError, match="is a link"):
            step()
    assert (outside / "secret").read_text() == "mine"
    assert (dataset / "red/red_1.png").exists()


@needs_posix
def test_a_journal_that_is_a_pipe_is_refused_at_once(dataset):
    os.mkfifo(dataset / JOURNAL_NAME)
    outcome = []

    def try_undo():
        try:
            undo(dataset)
        except UserError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=try_undo, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "undo waited on a pipe"
    assert outcome and "not a regular file" in outcome[0]


def test_a_planned_move_whose_name_another_file_took_is_not_recorded_and_undo_leaves_that_file(dataset, monkeypatch):
    real_move, every_file = dataset_edits.move_file, contents(dataset)

    def crash(src, dst):
        raise Crash

    monkeypatch.setattr(dataset_edits, "move_file", crash)
    with pytest.raises(Crash):
        relabel(dataset, ["red/red_1.png"], "blue")
    monkeypatch.setattr(dataset_edits, "move_file", real_move)
    (dataset / "blue/red_1.png").write_bytes(b"another file took the name")  # before the repair came
    [completed] = repair(dataset)
    assert completed.moves == ()  # this move never happened here
    assert (dataset / "red/red_1.png").exists()
    assert undo(dataset).moves == ()  # the done record is empty: the other file is not "moved back"
    assert (dataset / "blue/red_1.png").read_bytes() == b"another file took the name"
    assert not (dataset / "red/red_1 (2).png").exists()
    assert contents(dataset) - every_file == Counter({hashlib.sha256(b"another file took the name").hexdigest(): 1})


def test_a_moved_file_replaced_by_hand_is_not_taken_for_the_planned_one(dataset, monkeypatch):
    """Crash after planning; the source was moved away by hand and another file put at the target:
    the inode recorded with the plan tells them apart."""
    real_move = dataset_edits.move_file

    def crash(src, dst):
        raise Crash

    monkeypatch.setattr(dataset_edits, "move_file", crash)
    with pytest.raises(Crash):
        relabel(dataset, ["red/red_2.png"], "blue")
    monkeypatch.setattr(dataset_edits, "move_file", real_move)
    os.rename(dataset / "red/red_2.png", dataset / "kept-aside.png")
    (dataset / "blue/red_2.png").write_bytes(b"not the planned file")
    [completed] = repair(dataset)
    assert completed.moves == ()


@needs_posix
def test_edits_started_at_the_same_instant_take_turns(dataset):
    files = [f"red/red_{i}.png" for i in range(4)]
    every_file, start, errors = contents(dataset), threading.Barrier(4), []

    def relabel_one(path):
        start.wait()
        try:
            relabel(dataset, [path], "green")
        except Exception as exc:  # noqa: BLE001 - collected and shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=relabel_one, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    entries = [json.loads(line) for line in (dataset / JOURNAL_NAME).read_text().splitlines()]
    planned_ids = [e["id"] for e in entries if e["state"] == "planned"]
    assert sorted(planned_ids) == [1, 2, 3, 4]  # no two actions share an id
    # Each action is planned and done before the next one is planned.
    assert [e["state"] for e in entries] == ["planned", "done"] * 4
    assert contents(dataset) == every_file
    assert all((dataset / "green" / Path(f).name).exists() for f in files)


def test_an_excluded_folder_that_is_a_file_is_one_line_now_and_later(dataset, monkeypatch):
    (dataset / "_excluded").write_text("not a folder")
    with pytest.raises(UserError, match="is not a folder"):
        dataset_edits.exclude(dataset, ["red/red_1.png"])
    assert (dataset / "red/red_1.png").exists()
    # A journal planned before `_excluded` became a file: the repair says why it cannot finish, every time.
    journal_with(dataset, planned([["red/red_1.png", "_excluded/red/red_1.png"]], kind="exclude", target=""))
    for _ in range(2):
        with pytest.raises(UserError, match="cannot complete exclude #1"):
            repair(dataset)
    assert (dataset / "red/red_1.png").exists() and [a.id for a in pending(dataset)] == [1]
