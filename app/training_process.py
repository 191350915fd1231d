"""A run of several processes (DistributedDataParallel) started from the window.

torchrun's ranks are processes, so the window cannot run them on a QThread: it starts the command
line's `train --nproc N --events-jsonl` as a child (QProcess) and reads rank 0's events back
from its stdout, one JSON line each, as the same dataclasses the in-process trainer emits. The
plots, progress and results cannot tell the difference. Pause and Stop write a word into a
control file that every rank reads (engine.distributed.remote_control), so a stop is clean: the ranks agree
on the step, and rank 0 keeps the last checkpoint.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QProcess, QTimer, Slot

from engine.config import RunConfig, save_project
from engine.runs.event_lines import read_event_line
from engine.events import TrainingControl
from engine.distributed.launch import ANOTHER_PROCESS_FAILED
from engine.distributed.remote_control import write_control

from app.run_events import CLI_ERROR_PREFIX, PACKAGE_ROOT, RunEvents, RunFailure

KILL_AFTER_MS = 10_000  # after a SIGTERM: as long as wait() gives the processes


class ProcessControl(TrainingControl):
    """Pause, resume and stop of a run in other processes: each also written to its control file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def stop(self) -> None:
        super().stop()
        write_control(self.path, "stop")

    def pause(self) -> None:
        super().pause()
        write_control(self.path, "pause")

    def resume(self) -> None:
        super().resume()
        write_control(self.path, "run")


def train_command(project: Path, control: Path, config: RunConfig, processes: int, resume: bool) -> list[str]:
    """The arguments after the Python interpreter: the CLI's own `train`, as a person could type it."""
    arguments = ["-m", "app", "train", "--events-jsonl", "--control-file", str(control),
                 "--nproc", str(processes)]
    if resume:  # a resumed run reads its configuration from its folder; only these may change
        return arguments + ["--resume", config.out_dir, "--epochs", str(config.train.epochs),
                            "--device", config.train.device]
    return arguments + ["--project", str(project)]


class TrainingProcess(RunEvents):
    """A run's events from a child process group instead of a thread."""

    def __init__(self, config: RunConfig, processes: int, resume: bool, parent=None):
        super().__init__(parent)
        self._folder = Path(tempfile.mkdtemp(prefix="ts-processes-"))  # the project and the control file
        self.control = ProcessControl(self._folder / "control")
        write_control(self.control.path, "run")
        project = self._folder / "project.json"
        save_project(project, config)
        self._arguments = train_command(project, self.control.path, config, processes, resume)
        self._process = QProcess(self)
        self._process.setWorkingDirectory(str(PACKAGE_ROOT))
        self._process.readyReadStandardOutput.connect(self._read_events)
        self._process.finished.connect(self._on_finished)
        self._process.errorOccurred.connect(self._on_error)
        self._pending = b""
        self._result = None
        self._failure = ""
        self._ended = False

    def start(self) -> None:
        self._process.start(sys.executable, self._arguments)

    def wait(self, timeout_ms: int) -> bool:
        """Wait for the process group to end (after a stop); when it takes longer, SIGTERM, which
        torchrun's launcher passes on to its ranks (a SIGKILL would leave them running), then kill."""
        if self._process.state() == QProcess.ProcessState.NotRunning:
            return True
        if self._process.waitForFinished(timeout_ms):
            return True
        self._process.terminate()
        if not self._process.waitForFinished(KILL_AFTER_MS):
            self._process.kill()
            self._process.waitForFinished(5_000)
        return False

    def terminate(self) -> None:
        """Without waiting: SIGTERM, which torchrun's launcher passes on to its ranks (a SIGKILL would
        leave them running), then SIGKILL if they are still there KILL_AFTER_MS later."""
        if self._process.state() == QProcess.ProcessState.NotRunning:
            return
        self._process.terminate()
        QTimer.singleShot(KILL_AFTER_MS, self, self._kill)

    @Slot()
    def _kill(self) -> None:
        if self._process.state() != QProcess.ProcessState.NotRunning:
            self._process.kill()

    @Slot()
    def _read_events(self) -> None:
        lines = (self._pending + bytes(self._process.readAllStandardOutput().data())).split(b"\n")
        self._pending = lines.pop()  # a line not yet complete
        for line in lines:
            read = read_event_line(line.decode(errors="replace"))
            if read is None:
                continue
            kind, value = read
            if kind == "status":
                self.status_changed.emit(*value)
            elif kind == "started":
                self.run_started.emit(value)
            elif kind == "batch":
                self.batch_finished.emit(value)
            elif kind == "epoch":
                self.epoch_finished.emit(value)
            elif kind == "result":
                self._result = value
            elif kind == "failed":
                self._failure = value

    @Slot(int, QProcess.ExitStatus)
    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_events()
        if self._result is not None:  # rank 0 finished its run (a Stop while the ranks were still
            self._end(self.finished, self._result)  # setting up can leave another rank to fail after it)
            return
        errors = bytes(self._process.readAllStandardError().data()).decode(errors="replace").strip().splitlines()
        said = [line[len(CLI_ERROR_PREFIX):] for line in errors if line.startswith(CLI_ERROR_PREFIX)]
        if said and (not self._failure or self._failure.startswith(ANOTHER_PROCESS_FAILED)):
            message = said[-1]  # the launcher names the rank that failed first; rank 0 may only have lost it
        else:
            message = self._failure or f"the training processes stopped unexpectedly ({errors[-1] if errors else f'exit code {code}'})"
        self._end(self.failed, RunFailure(message))

    @Slot(QProcess.ProcessError)
    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._end(self.failed, RunFailure(f"cannot start the training processes: {self._process.errorString()}"))

    def _end(self, signal, value) -> None:
        if self._ended:
            return
        self._ended = True
        shutil.rmtree(self._folder, ignore_errors=True)
        signal.emit(value)
