"""Pause and Stop for a run in other processes (the window's several-process runs, a cluster job).

The window cannot reach a TrainingControl inside torchrun's children, so it writes one word into
a small file — "run", "pause" or "stop" — and every rank reads it (a stat per step; the text only
when the file changed). A person can do the same: `echo stop > control`.

With several processes the ranks must stop or pause at the same step: a rank that left the loop
alone would leave the others waiting in a gradient all-reduce. So in the step loop the ranks
combine what each read with one tiny all-reduce (stop wins over pause, pause over run), and only
that agreed word counts. Before the loop (decoding, caching features) each rank stops on its own
reading; those phases hold no gradient all-reduce to wait in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from engine.atomic import atomic_write_bytes
from engine.distributed.process_group import SINGLE, ProcessGroup
from engine.events import TrainingControl
from engine.errors import UserError
from engine.small_files import read_small_file, refuse_unless_regular

WORDS = ("run", "pause", "stop")
CONTROL_FILE_LIMIT = 64  # a word and some white space; more is not a control file
PAUSED_POLL_S = 0.2


def write_control(path: str | os.PathLike, word: str) -> None:
    """Ask the run reading `path` to run, pause or stop (atomic: a reader never sees half a word)."""
    if word not in WORDS:
        raise ValueError(f"control word must be one of {WORDS}, got {word!r}")
    atomic_write_bytes(Path(path), (word + "\n").encode())


class ControlFile:
    """The word in the file; the last good one while the file is missing or holds something else."""

    def __init__(self, path: str | os.PathLike) -> None:
        refuse_unless_regular(path, "control file")  # a pipe would block each step, a device never end
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._word = "run"

    def read(self) -> str:
        try:
            stat = self.path.stat()
        except OSError:
            return self._word
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:  # a pipe or device put there mid-run is ignored like a missing file
                word = read_small_file(self.path, CONTROL_FILE_LIMIT).decode("utf-8", "replace").strip()
            except (OSError, UserError):
                return self._word
            if word in WORDS:
                self._word = word
        return self._word


class FileControl(TrainingControl):
    """A TrainingControl driven by a control file (and by this process's own stop()/pause()),
    the same decision on every rank at every step."""

    def __init__(self, path: str | os.PathLike, group: ProcessGroup = SINGLE) -> None:
        super().__init__()
        self.file = ControlFile(path)
        self.group = group
        self._in_loop = False  # once steps have begun, only what every rank agreed on counts
        self._agreed = "run"  # the word the ranks agreed on at the last step
        self._votes_group = None  # with nccl: a gloo group, so a vote never waits for the GPU

    def _local_word(self) -> str:
        word = self.file.read()
        if super().stop_requested:
            return "stop"
        if super().paused:
            return "pause" if word == "run" else word
        return word

    @property
    def stop_requested(self) -> bool:
        if self._in_loop:
            return self._agreed == "stop"
        return self._local_word() == "stop"

    @property
    def paused(self) -> bool:
        return self._local_word() == "pause"

    def check_step(self, step: int, steps: int) -> bool:
        """Called before each training step on every rank (a rank whose share ran out takes
        zero-loss steps, so all call it equally often); True: stop now. Waits while paused."""
        self._in_loop = True
        while True:
            self._agreed = self._agree(self._local_word())
            if self._agreed != "pause":
                return self._agreed == "stop"
            time.sleep(PAUSED_POLL_S)

    def _agree(self, word: str) -> str:
        if not self.group.is_distributed:
            return word
        import torch.distributed as dist

        if self._votes_group is None and dist.get_backend() != "gloo":  # every rank gets here at its first step
            self._votes_group = dist.new_group(backend="gloo")
        votes = torch.zeros(len(WORDS))
        votes[WORDS.index(word)] = 1
        dist.all_reduce(votes, group=self._votes_group)  # None: the default (gloo) group
        return "stop" if votes[2] else "pause" if votes[1] else "run"
