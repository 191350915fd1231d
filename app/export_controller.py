"""Export of the shown run's best checkpoint, in a child process (app.worker.ExportProcess): each format
is checked for parity before it counts as written; an int8 ONNX file, when asked, is kept only if its
accuracy on the validation images holds (engine.deploy.int8)."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from app.session_state import Messages, ShownRun
from app.worker import ExportProcess
from engine.errors import UserError
from widgets.export_dialog import meta_from_run

NOTHING_TO_EXPORT = "No checkpoint to export yet: train first."


class ExportController(QObject):
    finished = Signal(str, list)  # the folder, one report (a dict) per file: parity, or int8 (kept or refused)
    failed = Signal(str)

    def __init__(self, shown_run: ShownRun, messages: Messages, parent=None):
        super().__init__(parent)
        self._shown_run, self._messages = shown_run, messages
        self._exporter = ExportProcess(self)
        self._folder = ""  # where the export under way writes
        self._exporter.finished.connect(self._on_exported)
        self._exporter.failed.connect(self.failed)

    def checkpoint(self) -> Path | None:
        """The shown run's best checkpoint, when there is one to export."""
        run = self._shown_run.state
        return run.folder.checkpoint_path if run.can_export else None

    def offer(self) -> tuple[Path, dict] | None:
        """The checkpoint and what its run records of it, for the Export dialog; None (and why, to
        error_raised) when there is nothing to export."""
        checkpoint = self.checkpoint()
        if checkpoint is None:
            self._messages.error_raised.emit(NOTHING_TO_EXPORT)
            return None
        try:
            return checkpoint, meta_from_run(self._shown_run.state.folder.read_run())
        except UserError as exc:
            self._messages.error_raised.emit(str(exc))
            return None

    @Slot(str, list, object)
    def start(self, folder: str, formats: list[str], int8=None) -> None:
        """Write each format into `folder` (in a child process); each is checked for parity first. With
        `int8` (an engine.deploy.int8.Int8Settings) the ONNX file is also quantized, behind its accuracy gate."""
        checkpoint = self.checkpoint()
        if checkpoint is None:
            self.failed.emit(NOTHING_TO_EXPORT)
            return
        folder = folder.strip()
        problem = self._make_ready(Path(folder).expanduser()) if folder else "Name the folder to export into."
        if problem:
            self.failed.emit(problem)
            return
        self._folder = folder
        self._exporter.start(checkpoint, Path(folder).expanduser().resolve(), formats, int8)

    @staticmethod
    def _make_ready(target: Path) -> str:
        """Ready `target` to be written into: a new folder is created, as a person who typed its name
        expects, but only inside a folder that exists (a mistyped path makes no tree of folders).
        Why it cannot be, in one line; "" when it is ready."""
        if not target.is_absolute():  # relative to wherever the program was started: never what was meant
            return f"Export folder {target} is not a full path: choose one with Browse…"
        if target.exists() and not target.is_dir():
            return f"{target} is a file: choose a folder."
        if not target.exists():
            if not target.parent.is_dir():
                return (f"Export folder not found: neither {target} nor {target.parent} exists; "
                        f"choose a folder inside one that does.")
            try:
                target.mkdir()
            except OSError as exc:
                return f"Cannot create {target}: {exc.strerror or exc}."
        if not os.access(target, os.W_OK):
            return f"Cannot write into {target}: choose another folder."
        return ""

    @Slot(list)
    def _on_exported(self, reports: list) -> None:
        self.finished.emit(self._folder, reports)

    def shutdown(self) -> None:
        self._exporter.stop_and_wait()
