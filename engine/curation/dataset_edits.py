"""Mending a dataset in place: relabel (move a file into another class folder), exclude (move it to
`_excluded/<class>/`, which the scan ignores), undo and redo. Nothing is ever deleted.

Every action is a batch of moves written to a journal in the dataset folder
(`.transfer-studio-journal.jsonl`, one JSON object a line, fsynced) BEFORE any file moves, then
marked done. A crash in the middle leaves a "planned" entry without its "done" line; `repair(DIR)`,
called by every command that opens the dataset, completes it, so an action is never half-done.

A move never replaces a file: it hard-links the file under its new name (which fails when the name
exists) and then unlinks the old name, so at every instant the bytes have at least one name. Where
hard links are not possible (another file system), a rename onto a name checked to be free.
Name clashes get a free name: `cat.jpg` -> `cat (2).jpg`.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from engine.atomic import _fsync_dir
from engine.data.dataset import class_dirs, has_train_val_split
from engine.errors import RunFailed, UserError
from engine.data.images import is_image_file

JOURNAL_NAME = ".transfer-studio-journal.jsonl"
EXCLUDED = "_excluded"
SPLITS = ("train", "val")  # the "train-val" layout's top folders

Move = tuple[str, str]  # (from, to): paths relative to the dataset folder, posix separators


@dataclass(frozen=True)
class Action:
    """One journal entry: a batch of moves done as a whole."""

    id: int
    kind: str  # "relabel", "exclude", "undo" or "redo"
    moves: tuple[Move, ...]
    target: str = ""  # relabel: the class; undo/redo: the kind of the action undone or redone
    of: int | None = None  # undo/redo: the id of the action undone or redone

    def describe(self) -> str:
        n = f"{len(self.moves)} file(s)"
        if self.kind == "relabel":
            return f"relabel #{self.id}: moved {n} to class {self.target}"
        if self.kind == "exclude":
            return f"exclude #{self.id}: moved {n} to {EXCLUDED}/"
        how = "back" if self.kind == "undo" else "again"
        return f"{self.kind} #{self.id}: {self.kind} of {self.target} #{self.of}, moved {n} {how}"

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "moves": [list(m) for m in self.moves], "target": self.target,
                "of": self.of}


# --- the public actions ---------------------------------------------------------------------------


def relabel(root: str | os.PathLike, paths: Sequence[str | os.PathLike], to_class: str) -> Action:
    """Move each image into the class folder `to_class` (of its own split in the train/val layout)."""
    root = _dataset_root(root)
    repair(root)
    files = [_dataset_file(root, p) for p in paths]
    moves = []
    for rel in files:
        split, given = _split_and_class(root, rel)
        folder = PurePosixPath(*split, to_class)
        if to_class not in class_dirs(root / PurePosixPath(*split)):
            raise UserError(f"unknown class '{to_class}': {root / folder} is not a class folder")
        if given == to_class:
            raise UserError(f"{rel} is already in class {to_class}")
        moves.append((rel, folder / PurePosixPath(rel).name))
    return _perform(root, "relabel", moves, target=to_class)


def exclude(root: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> Action:
    """Move each image to `_excluded/<class>/` (`_excluded/<split>/<class>/` in the train/val layout)."""
    root = _dataset_root(root)
    repair(root)
    moves = []
    for rel in (_dataset_file(root, p) for p in paths):
        split, given = _split_and_class(root, rel)
        moves.append((rel, PurePosixPath(EXCLUDED, *split, given, PurePosixPath(rel).name)))
    return _perform(root, "exclude", moves)


def undo(root: str | os.PathLike) -> Action:
    """Reverse the journal's last action not undone yet."""
    root = _dataset_root(root)
    repair(root)
    undoable, _ = history(root)
    if not undoable:
        raise UserError(f"nothing to undo in {root}")
    last = undoable[-1]
    moves = [(dst, PurePosixPath(src)) for src, dst in reversed(last.moves)]  # back to the very names
    original = last.of if last.kind == "redo" else last.id  # a redo is its original action again
    return _perform(root, "undo", moves, target=_original_kind(last), of=original)


def redo(root: str | os.PathLike) -> Action:
    """Do again the action the last undo reversed (unless a new action came after it)."""
    root = _dataset_root(root)
    repair(root)
    _, redoable = history(root)
    if not redoable:
        raise UserError(f"nothing to redo in {root}")
    undone = redoable[-1]  # an undo entry: its moves reversed give the action again
    moves = [(dst, PurePosixPath(src)) for src, dst in reversed(undone.moves)]
    return _perform(root, "redo", moves, target=undone.target, of=undone.of)


def history(root: str | os.PathLike) -> tuple[list[Action], list[Action]]:
    """(actions that undo would reverse, oldest first; undo entries that redo would repeat)."""
    undoable: list[Action] = []
    redoable: list[Action] = []
    for action in _done_actions(_journal(Path(root))):
        if action.kind == "undo":
            if undoable:
                undoable.pop()
            redoable.append(action)
        elif action.kind == "redo":
            if redoable:
                redoable.pop()
            undoable.append(action)
        else:
            undoable.append(action)
            redoable.clear()  # a new action ends the redo chain, as in any editor
    return undoable, redoable


def repair(root: str | os.PathLike) -> list[Action]:
    """Complete every action a crash left half-done (planned, not marked done); returns them.
    A move whose file is already at its new name counts as done; one whose file is gone from both
    names (moved away by hand) is skipped and left out of the done record."""
    root = Path(root)
    journal = _journal(root)
    if not journal.exists():
        return []
    finished = []
    for action in _pending_actions(journal):
        done = []
        for src, dst in action.moves:
            if _finish_move(root, src, dst):
                done.append((src, dst))
        completed = Action(action.id, action.kind, tuple(done), action.target, action.of)
        _append(journal, {"state": "done", **completed.to_json()})
        finished.append(completed)
    return finished


# --- planning and moving --------------------------------------------------------------------------


def _perform(root: Path, kind: str, moves: Iterable[tuple[str, PurePosixPath]], target: str = "",
             of: int | None = None) -> Action:
    """Journal the batch of (file, wished-for new path) with free names, move, mark it done."""
    planned: list[Move] = []
    taken: set[str] = set()
    seen: set[str] = set()
    for src, wished in moves:
        if src in seen:
            continue  # the same file given twice moves once
        if not os.path.lexists(root / src):  # checked before the journal: a batch starts only when it can end
            raise UserError(f"{src} is no longer in {root} (moved by hand?); nothing was moved")
        seen.add(src)
        dst = _free_name(root, wished, taken)
        taken.add(dst)
        planned.append((src, dst))
    journal = _journal(root)
    action = Action(_next_id(journal), kind, tuple(planned), target, of)
    _append(journal, {"state": "planned", **action.to_json()})
    try:
        for src, dst in action.moves:
            move_file(root / src, root / dst)
    except OSError as exc:  # the journal keeps the batch: the next repair() completes it
        raise RunFailed(f"{kind} #{action.id} stopped half-way ({exc.filename or root}: {exc.strerror or exc}); "
                        f"the next command on {root} completes it") from None
    _append(journal, {"state": "done", **action.to_json()})
    return action


def move_file(src: Path, dst: Path) -> None:
    """Give `src` the name `dst`, never replacing an existing file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)  # FileExistsError when dst is taken: nothing replaced
    except FileExistsError:
        raise UserError(f"{dst} appeared while moving {src} there; nothing was replaced") from None
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise UserError(f"cannot move {src} to {dst}: {exc.strerror or exc}") from None
        if os.path.lexists(dst):
            raise UserError(f"{dst} appeared while moving {src} there; nothing was replaced") from None
        os.rename(src, dst)  # no hard links here: a rename onto the name just checked to be free
    else:
        os.unlink(src)  # the bytes keep their new name
    _fsync_dir(dst.parent)
    if src.parent != dst.parent:
        _fsync_dir(src.parent)


def _finish_move(root: Path, src: str, dst: str) -> bool:
    """Bring one journalled move to its end; False when its file is gone from both names."""
    source, target = root / src, root / dst
    if os.path.lexists(target):
        if os.path.lexists(source) and os.path.samefile(source, target):
            os.unlink(source)  # crashed between link and unlink: the bytes are at the new name
            _fsync_dir(source.parent)
        return True  # moved (or, if another file took the name, this move never happened: left alone)
    if os.path.lexists(source):
        move_file(source, target)
        return True
    return False


def _free_name(root: Path, wished: PurePosixPath, taken: set[str]) -> str:
    """`folder/name`, or `folder/stem (2).suffix` and so on when the name exists or is planned."""
    folder, name = wished.parent, wished.name
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while True:
        rel = str(folder / candidate)
        if rel not in taken and not os.path.lexists(root / rel):
            return rel
        n += 1
        candidate = f"{stem} ({n}){suffix}"


# --- checking the input ---------------------------------------------------------------------------


def _dataset_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    return path.resolve()


def _dataset_file(root: Path, path: str | os.PathLike) -> str:
    """The image's path relative to the dataset folder; one-line UserError when it is not one of its images."""
    given = Path(path).expanduser()
    full = given if given.is_absolute() else (root / given if not given.exists() else given)
    full = Path(os.path.abspath(full))
    try:
        rel = full.parent.resolve().relative_to(root) / full.name  # the file itself may be a link
    except ValueError:
        raise UserError(f"{path} is outside the dataset folder {root}") from None
    if not full.is_file():
        raise UserError(f"no such file: {path}")
    if not is_image_file(full):
        raise UserError(f"{path} is not an image file")
    rel = PurePosixPath(rel.as_posix())
    if rel.parts[0] == EXCLUDED:
        raise UserError(f"{path} is excluded already (undo brings it back)")
    _split_and_class(root, rel)  # must lie in a class folder
    return str(rel)


def _split_and_class(root: Path, rel: str | PurePosixPath) -> tuple[tuple[str, ...], str]:
    """(("train",) or ("val",) or (), class name) of a file in a class folder."""
    parts = PurePosixPath(rel).parts
    split = parts[:1] if has_train_val_split(root) and parts[0] in SPLITS else ()
    rest = parts[len(split):]
    if len(rest) < 2 or rest[0].startswith((".", "_")):
        raise UserError(f"{rel} is not in a class folder")
    return split, rest[0]


# --- the journal ----------------------------------------------------------------------------------


def _journal(root: Path) -> Path:
    return root / JOURNAL_NAME


def _append(journal: Path, entry: dict) -> None:
    """Append one line and fsync it: once this returns, the entry survives a crash."""
    new = not journal.exists()
    try:
        with open(journal, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise UserError(f"cannot write the journal {journal}: {exc.strerror or exc}") from None
    if new:
        _fsync_dir(journal.parent)


def _entries(journal: Path) -> list[dict]:
    """The journal's entries; a torn last line (a crash while appending it) is ignored: the
    action it began never moved a file, since moves start only after the line is written."""
    if not journal.exists():
        return []
    entries = []
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the journal {journal}: {exc}") from None
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), int) and entry.get("state") in ("planned", "done"):
            entries.append(entry)
    return entries


def _action(entry: dict) -> Action:
    try:
        return Action(entry["id"], entry["kind"], tuple((str(s), str(d)) for s, d in entry["moves"]),
                      entry.get("target") or "", entry.get("of"))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"the journal entry #{entry.get('id')} is damaged; fix or move the journal file") from None


def _done_actions(journal: Path) -> list[Action]:
    return [_action(e) for e in _entries(journal) if e["state"] == "done"]


def _pending_actions(journal: Path) -> list[Action]:
    entries = _entries(journal)
    done = {e["id"] for e in entries if e["state"] == "done"}
    return [_action(e) for e in entries if e["state"] == "planned" and e["id"] not in done]


def _next_id(journal: Path) -> int:
    return max((e["id"] for e in _entries(journal)), default=0) + 1


def _original_kind(action: Action) -> str:
    """What an undo reverses, named for the person: a redo is its original action again."""
    return action.target if action.kind == "redo" else action.kind
