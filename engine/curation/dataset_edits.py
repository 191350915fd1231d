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

The journal is data from disk, not instructions: every entry is checked before anything is done
(each path relative, normalized, inside the dataset, in a class folder or `_excluded/`, as its kind
allows) and a journal with one bad entry is refused whole. It must be a regular file (a link or a
pipe is refused), one process at a time holds it (an exclusive lock for the whole action), and a
move is done again only on the very file it planned (its inode, recorded with the plan).
Only the editing commands repair; reading commands (suspects, the window opening a folder) never do.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one editing process at a time is then the person's care
    fcntl = None

from engine.atomic import _fsync_dir, durable_fsync
from engine.data.dataset import class_dirs, has_train_val_split
from engine.errors import RunFailed, UserError
from engine.data.images import is_image_file

JOURNAL_NAME = ".transfer-studio-journal.jsonl"
EXCLUDED = "_excluded"
SPLITS = ("train", "val")  # the "train-val" layout's top folders

KINDS = ("relabel", "exclude", "undo", "redo")

Move = tuple[str, str]  # (from, to): paths relative to the dataset folder, posix separators
FileId = tuple[int, int]  # (st_dev, st_ino): a hard-link move keeps it, so it names the file moved


@dataclass(frozen=True)
class Action:
    """One journal entry: a batch of moves done as a whole."""

    id: int
    kind: str  # "relabel", "exclude", "undo" or "redo"
    moves: tuple[Move, ...]
    target: str = ""  # relabel: the class; undo/redo: the kind of the action undone or redone
    of: int | None = None  # undo/redo: the id of the action undone or redone
    files: tuple[FileId, ...] | None = None  # each move's file when planned; None in older journals

    def describe(self) -> str:
        n = f"{len(self.moves)} file(s)"
        if self.kind == "relabel":
            return f"relabel #{self.id}: moved {n} to class {self.target}"
        if self.kind == "exclude":
            return f"exclude #{self.id}: moved {n} to {EXCLUDED}/"
        how = "back" if self.kind == "undo" else "again"
        return f"{self.kind} #{self.id}: {self.kind} of {self.target} #{self.of}, moved {n} {how}"

    def to_json(self) -> dict:
        entry = {"id": self.id, "kind": self.kind, "moves": [list(m) for m in self.moves], "target": self.target,
                 "of": self.of}
        if self.files is not None:
            entry["files"] = [list(f) for f in self.files]
        return entry


# --- the public actions ---------------------------------------------------------------------------


def relabel(root: str | os.PathLike, paths: Sequence[str | os.PathLike], to_class: str) -> Action:
    """Move each image into the class folder `to_class` (of its own split in the train/val layout)."""
    root = _dataset_root(root)
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
    with _open_journal(root) as journal:
        _repair(root, journal)
        return _perform(root, journal, "relabel", moves, target=to_class)


def exclude(root: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> Action:
    """Move each image to `_excluded/<class>/` (`_excluded/<split>/<class>/` in the train/val layout)."""
    root = _dataset_root(root)
    if os.path.lexists(root / EXCLUDED) and not (root / EXCLUDED).is_dir():
        raise UserError(f"{root / EXCLUDED} is not a folder; move it away so that excluded images can go there")
    moves = []
    for rel in (_dataset_file(root, p) for p in paths):
        split, given = _split_and_class(root, rel)
        moves.append((rel, PurePosixPath(EXCLUDED, *split, given, PurePosixPath(rel).name)))
    with _open_journal(root) as journal:
        _repair(root, journal)
        return _perform(root, journal, "exclude", moves)


def undo(root: str | os.PathLike) -> Action:
    """Reverse the journal's last action not undone yet."""
    root = _dataset_root(root)
    with _open_journal(root) as journal:
        _repair(root, journal)
        undoable, _ = _history(journal.done_actions())
        if not undoable:
            raise UserError(f"nothing to undo in {root}")
        last = undoable[-1]
        moves = [(dst, PurePosixPath(src)) for src, dst in reversed(last.moves)]  # back to the very names
        original = last.of if last.kind == "redo" else last.id  # a redo is its original action again
        return _perform(root, journal, "undo", moves, target=_original_kind(last), of=original)


def redo(root: str | os.PathLike) -> Action:
    """Do again the action the last undo reversed (unless a new action came after it)."""
    root = _dataset_root(root)
    with _open_journal(root) as journal:
        _repair(root, journal)
        _, redoable = _history(journal.done_actions())
        if not redoable:
            raise UserError(f"nothing to redo in {root}")
        undone = redoable[-1]  # an undo entry: its moves reversed give the action again
        moves = [(dst, PurePosixPath(src)) for src, dst in reversed(undone.moves)]
        return _perform(root, journal, "redo", moves, target=undone.target, of=undone.of)


def history(root: str | os.PathLike) -> tuple[list[Action], list[Action]]:
    """(actions that undo would reverse, oldest first; undo entries that redo would repeat).
    Reads only: an action a crash left half-done is not completed here."""
    root = _dataset_root(root)
    with _open_journal(root, create=False) as journal:
        return _history(journal.done_actions() if journal else [])


def pending(root: str | os.PathLike) -> list[Action]:
    """Actions a crash left half-done, which the next edit completes. Reads only."""
    root = _dataset_root(root)
    with _open_journal(root, create=False) as journal:
        return journal.pending_actions() if journal else []


def _history(done: list[Action]) -> tuple[list[Action], list[Action]]:
    undoable: list[Action] = []
    redoable: list[Action] = []
    for action in done:
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
    For the editing commands only (each also repairs first, under the same lock)."""
    if not os.path.lexists(Path(root).expanduser() / JOURNAL_NAME):
        return []  # nothing to repair (also where the folder is not there: the command says so)
    root = _dataset_root(root)
    with _open_journal(root) as journal:
        return _repair(root, journal)


def _repair(root: Path, journal: _Journal) -> list[Action]:
    """A move whose very file (by inode) is already at its new name counts as done; one whose file
    is gone from both names, or whose new name another file has taken, never happened here and is
    left out of the done record, so undo never moves a file the action did not move."""
    finished = []
    for action in journal.pending_actions():
        files = action.files or (None,) * len(action.moves)
        done, kept = [], []
        for (src, dst), file_id in zip(action.moves, files):
            try:
                finished_move = _finish_move(root, src, dst, file_id)
            except OSError as exc:  # e.g. _excluded/ became a file: say so, and keep the plan for later
                raise UserError(f"cannot complete {action.kind} #{action.id}, left half-done by a crash: "
                                f"{exc.filename or dst}: {exc.strerror or exc}") from None
            if finished_move:
                done.append((src, dst))
                kept.append(file_id)
        completed = Action(action.id, action.kind, tuple(done), action.target, action.of,
                           tuple(kept) if action.files is not None else None)
        journal.append({"state": "done", **completed.to_json()})
        finished.append(completed)
    return finished


# --- planning and moving --------------------------------------------------------------------------


def _perform(root: Path, journal: _Journal, kind: str, moves: Iterable[tuple[str, PurePosixPath]],
             target: str = "", of: int | None = None) -> Action:
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
    files = tuple(_file_id(root / src) for src, _ in planned)
    action = Action(journal.next_id(), kind, tuple(planned), target, of, files)
    journal.append({"state": "planned", **action.to_json()})
    try:
        for src, dst in action.moves:
            move_file(root / src, root / dst)
    except OSError as exc:  # the journal keeps the batch: the next repair() completes it
        raise RunFailed(f"{kind} #{action.id} stopped half-way ({exc.filename or root}: {exc.strerror or exc}); "
                        f"the next command on {root} completes it") from None
    journal.append({"state": "done", **action.to_json()})
    return action


def _file_id(path: Path) -> FileId:
    info = os.lstat(path)
    return info.st_dev, info.st_ino


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


def _finish_move(root: Path, src: str, dst: str, file_id: FileId | None) -> bool:
    """Bring one journalled move to its end; False when it did not and cannot happen to its file."""
    source, target = root / src, root / dst
    is_ours = (lambda path: _file_id(path) == tuple(file_id)) if file_id is not None else (lambda path: True)
    if os.path.lexists(target):
        if os.path.lexists(source) and os.path.samefile(source, target):
            os.unlink(source)  # crashed between link and unlink: the bytes are at the new name
            _fsync_dir(source.parent)
            return True
        # Moved already, if the file at the new name is the one planned; another file took the name
        # otherwise, and this move never happened: both are left alone.
        return not os.path.lexists(source) and is_ours(target)
    if os.path.lexists(source) and is_ours(source):
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


def _journal_path(root: Path) -> Path:
    return root / JOURNAL_NAME


class _Journal:
    """The open journal of one dataset, held (locked) for one whole action."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root, self.fd, self.path = root, fd, _journal_path(root)

    def append(self, entry: dict) -> None:
        """Append one line and fsync it: once this returns, the entry survives a crash."""
        data = (json.dumps(entry) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
            durable_fsync(self.fd)
        except OSError as exc:
            raise UserError(f"cannot write the journal {self.path}: {exc.strerror or exc}") from None

    def entries(self) -> list[dict]:
        """The journal's entries, each checked; a torn last line (a crash while appending it) is
        ignored: the action it began never moved a file, since moves start only after the line is written."""
        try:
            size = os.fstat(self.fd).st_size
            text = os.pread(self.fd, size, 0).decode("utf-8") if size else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the journal {self.path}: {exc}") from None
        entries = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(entry, dict) and type(entry.get("id")) is int and entry.get("state") in ("planned", "done"):
                entries.append(entry)
        return entries

    def actions(self, state: str) -> list[Action]:
        """The done actions, or the planned ones not done; every entry is checked, whichever is asked:
        one bad entry refuses the whole journal."""
        entries = [(e["state"], self._checked(e)) for e in self.entries()]
        if state == "done":
            return [action for s, action in entries if s == "done"]
        done = {action.id for s, action in entries if s == "done"}
        return [action for s, action in entries if s == "planned" and action.id not in done]

    def done_actions(self) -> list[Action]:
        return self.actions("done")

    def pending_actions(self) -> list[Action]:
        return self.actions("planned")

    def next_id(self) -> int:
        return max((e["id"] for e in self.entries()), default=0) + 1

    def _checked(self, entry: dict) -> Action:
        action = _action(entry, self.path)
        problem = _journal_problem(self.root, action)
        if problem:
            raise UserError(f"the journal {self.path} is refused: entry #{action.id} {problem}; nothing was moved "
                            f"(move the journal away to go on)")
        return action


@contextmanager
def _open_journal(root: Path, create: bool = True) -> Iterator[_Journal | None]:
    """The journal, locked: exclusively to edit (created when missing), shared to read (None when
    there is none). A link or anything but a regular file is refused, never followed or waited on."""
    path = _journal_path(root)
    flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT) if create else os.O_RDONLY
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once, then is refused
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        if create:
            raise UserError(f"cannot write the journal {path}: its folder is gone") from None
        yield None
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"the journal {path} is a link; Transfer Studio writes only a journal file of its "
                            f"own (move the link away to go on)") from None
        raise UserError(f"cannot open the journal {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"the journal {path} is not a regular file (a pipe or a device?); move it away to go on")
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if create else fcntl.LOCK_SH)  # another edit of this dataset finishes first
        if create and os.fstat(fd).st_size == 0:
            _fsync_dir(root)  # a new journal's name survives a crash
        yield _Journal(root, fd)
    finally:
        os.close(fd)  # releases the lock


def _action(entry: dict, journal: Path) -> Action:
    try:
        moves = entry["moves"]
        files = entry.get("files")
        if not isinstance(moves, list) or not all(isinstance(m, list) and len(m) == 2 for m in moves):
            raise TypeError
        if files is not None and (not isinstance(files, list) or len(files) != len(moves) or not all(
                isinstance(f, list) and len(f) == 2 and all(type(n) is int for n in f) for f in files)):
            raise TypeError
        of = entry.get("of")
        if of is not None and type(of) is not int:
            raise TypeError
        return Action(entry["id"], str(entry["kind"]), tuple((str(s), str(d)) for s, d in moves),
                      str(entry.get("target") or ""), of,
                      None if files is None else tuple((f[0], f[1]) for f in files))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"the journal {journal} is refused: entry #{entry.get('id')} is damaged; nothing was moved "
                        f"(move the journal away to go on)") from None


def _journal_problem(root: Path, action: Action) -> str | None:
    """Why the entry cannot be one this module wrote for this dataset, or None."""
    if action.kind not in KINDS:
        return f"has an unknown kind '{action.kind[:40]}'"
    for src, dst in action.moves:
        for path in (src, dst):
            where = _journal_path_problem(root, path)
            if where:
                return f"moves {path[:200]!r}, {where}"
        from_excluded, to_excluded = _is_excluded(src), _is_excluded(dst)
        allowed = {"relabel": not from_excluded and not to_excluded,
                   "exclude": not from_excluded and to_excluded}.get(action.kind, not (from_excluded and to_excluded))
        if not allowed:
            return f"moves {src[:200]!r} to {dst[:200]!r}, which a {action.kind} never does"
    return None


def _journal_path_problem(root: Path, path: str) -> str | None:
    """Why `path` is no file of this dataset's class folders or of _excluded/, or None."""
    if not path or "\x00" in path or "\\" in path:
        return "not a dataset path"
    pure = PurePosixPath(path)
    if pure.is_absolute() or str(pure) != path or any(part in (".", "..") for part in pure.parts):
        return "which is not a plain path inside the dataset"
    parts = pure.parts[1:] if pure.parts[0] == EXCLUDED else pure.parts
    try:
        _split_and_class(root, PurePosixPath(*parts))
    except (UserError, TypeError):
        return "which is not in a class folder"
    real_parent = Path(os.path.realpath(root / pure.parent))
    if real_parent != root and root not in real_parent.parents:
        return "whose folder leads outside the dataset"
    return None


def _is_excluded(path: str) -> bool:
    return PurePosixPath(path).parts[:1] == (EXCLUDED,)


def _original_kind(action: Action) -> str:
    """What an undo reverses, named for the person: a redo is its original action again."""
    return action.target if action.kind == "redo" else action.kind
