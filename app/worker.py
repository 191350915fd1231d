"""Work off the GUI thread.

`TrainingController` owns a QThread whose worker calls `engine.training.trainer.fit` and re-emits the
engine's callbacks as Qt signals carrying the engine's own frozen dataclasses (RunStarted,
BatchEvent, EpochEvent, FitResult): plain data, so nothing of the model crosses the thread.
Stop and Pause set flags the engine checks every batch, so stopping never needs
QThread.terminate(). `BackgroundTasks` runs short jobs (listing a folder, building a layer
tree, checking a weights file) and hands their results back on the GUI thread. `ExportProcess`
exports in a child process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QProcess, QThread, Qt, Signal, Slot

from app.run_events import CLI_ERROR_PREFIX, PACKAGE_ROOT, RunEvents, RunFailure, describe_failure
from app.training_process import TrainingProcess
from engine.config import RunConfig
from engine.data.dataset import DatasetScan
from engine.errors import UserError
from engine.events import BatchEvent, Callbacks, EpochEvent, RunStarted, TrainingControl
from engine.training.trainer import fit


def lower_this_threads_priority(increment: int = 10) -> None:
    """Let the GUI thread win the CPU whenever it wants it.

    On a machine with few cores, the trainer's compute threads otherwise keep the GUI thread
    waiting for a core for 100 ms and more. On Linux, niceness is per thread and inherited by the
    threads this one creates (its OpenMP team), so only training yields; it still takes every
    cycle the GUI does not use. The niceness is relative to the process's own: a window started
    with `nice -n 19` must not be outranked by its own trainer. Elsewhere this is a no-op.
    """
    if sys.platform.startswith("linux"):
        try:
            process_niceness = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, process_niceness + increment))
        except (OSError, AttributeError):
            pass


class _SignalCallbacks(Callbacks):
    """Called on the training thread; each signal is queued to the GUI thread."""

    def __init__(self, worker: TrainingWorker):
        self.worker = worker

    def on_run_started(self, event: RunStarted) -> None:
        self.worker.run_started.emit(event)

    def on_status(self, text: str, done: int = 0, total: int = 0) -> None:
        self.worker.status_changed.emit(text, done, total)

    def on_batch_end(self, event: BatchEvent) -> None:
        self.worker.batch_finished.emit(event)

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.worker.epoch_finished.emit(event)


class TrainingWorker(RunEvents):
    def __init__(self, config: RunConfig, control: TrainingControl, resume: bool, scan: DatasetScan | None):
        super().__init__()
        self.config = config
        self.control = control
        self.resume = resume
        self.scan = scan

    @Slot()
    def run(self) -> None:
        lower_this_threads_priority()
        try:
            result = fit(self.config, _SignalCallbacks(self), self.control, scan=self.scan, resume=self.resume)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the window, not vanish
            if not isinstance(exc, UserError):
                traceback.print_exc()  # the full story for a bug report, on the terminal
            self.failed.emit(RunFailure.from_exception(exc))
        else:
            self.finished.emit(result)


# Every training thread ever started, so tests can prove none is left running.
STARTED_THREADS: weakref.WeakSet = weakref.WeakSet()


class TrainingController(QObject):
    """Owns the worker thread: start, pause/resume, stop, and a clean join on close."""

    run_started = Signal(object)  # RunStarted
    status_changed = Signal(str, int, int)
    batch_finished = Signal(object)  # BatchEvent
    epoch_finished = Signal(object)  # EpochEvent
    run_finished = Signal(object)  # FitResult
    run_failed = Signal(object)  # RunFailure
    running_changed = Signal(bool)
    paused_changed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: TrainingWorker | None = None
        self._processes = None  # a TrainingProcess while a run of several processes is in progress
        self.control = TrainingControl()

    @property
    def is_running(self) -> bool:
        return self._thread is not None or self._processes is not None

    def start(self, config: RunConfig, resume: bool = False, scan: DatasetScan | None = None,
              processes: int = 1) -> None:
        """Train `config` on a thread of this process, or as `processes` processes (DDP)."""
        if self.is_running:
            raise RuntimeError("a run is already in progress")
        if processes > 1:
            self._start_processes(config, resume, processes)
            return
        self.control = TrainingControl()
        thread = QThread()
        thread.setObjectName("TransferStudioTraining")
        worker = TrainingWorker(config, self.control, resume, scan)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        # Signal to signal: queued across the thread, re-emitted by this object on the GUI thread.
        worker.run_started.connect(self.run_started)
        worker.status_changed.connect(self.status_changed)
        worker.batch_finished.connect(self.batch_finished)
        worker.epoch_finished.connect(self.epoch_finished)
        worker.finished.connect(self._on_worker_finished)
        worker.failed.connect(self._on_worker_failed)
        self._thread, self._worker = thread, worker
        STARTED_THREADS.add(thread)
        thread.start()
        self.running_changed.emit(True)

    def _start_processes(self, config: RunConfig, resume: bool, processes: int) -> None:
        runner = TrainingProcess(config, processes, resume, self)
        self.control = runner.control
        for signal in ("run_started", "status_changed", "batch_finished", "epoch_finished"):
            getattr(runner, signal).connect(getattr(self, signal))
        runner.finished.connect(self._on_worker_finished)
        runner.failed.connect(self._on_worker_failed)
        self._processes = runner
        runner.start()
        self.running_changed.emit(True)

    @property
    def paused(self) -> bool:
        return self.control.paused

    def set_paused(self, paused: bool) -> None:
        if not self.is_running or paused == self.paused:
            return
        if paused:
            self.control.pause()
        else:
            self.control.resume()
        self.paused_changed.emit(paused)

    def stop(self) -> None:
        if self.is_running:  # a run of several processes is steered through a file that ends with it
            self.control.stop()

    def hurry(self) -> None:
        """A stop that takes too long: a run's processes are terminated (a thread can only be waited for)."""
        if self._processes is not None:
            self._processes.terminate()

    def stop_and_wait(self, timeout_ms: int = 60_000) -> bool:
        """Stop and join the thread (used when the window closes). True when it ended in time."""
        if not self.is_running:
            return True
        self.control.stop()
        if self._processes is not None:
            ended = self._processes.wait(timeout_ms)
            self._cleanup()
            return ended
        self._thread.quit()  # the thread's event loop ends as soon as the worker's run() returns
        ended = self._thread.wait(timeout_ms)
        self._cleanup()
        return ended

    @Slot(object)
    def _on_worker_finished(self, result) -> None:
        self._cleanup()
        self.run_finished.emit(result)

    @Slot(object)
    def _on_worker_failed(self, failure: RunFailure) -> None:
        self._cleanup()
        self.run_failed.emit(failure)

    def _cleanup(self) -> None:
        if self._processes is not None:
            self._processes.deleteLater()
            self._processes = None
            self.running_changed.emit(False)
        if self._thread is None:
            return
        self._thread.quit()
        self._thread.wait()
        self._worker.deleteLater()
        self._thread.deleteLater()
        self._thread = self._worker = None
        self.running_changed.emit(False)


_START_JOBS = QEvent.Type(QEvent.registerEventType())


class BackgroundTasks(QObject):
    """Short jobs off the GUI thread.

    The result comes back through a queued signal, so the callbacks run on the GUI thread.
    A newer job of the same kind makes an older one's result obsolete; `is_current(kind,
    generation)` lets a long job notice that and stop early.

    A job starts once the GUI thread has laid out and painted what its caller just changed: a Python
    job started at once took the GIL from that paint, and a scan's listing stalled the window for
    40-60 ms. The start is an event posted at the paint's own low priority, twice over: a layout
    request handled after the first posts its paint behind it (a model built meanwhile turned the
    layer tree's 600 calls into Python while painting into a 100 ms stall).
    """

    _done = Signal(object, object, int, str)  # callback, its argument, generation, kind

    def __init__(self, parent=None):
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ts-task")
        self._generation: dict[str, int] = {}
        self._waiting: list[Callable[[], None]] = []
        self._rounds_left = 0  # START_JOBS events still to come before the waiting jobs start
        self._closed = False
        self._done.connect(self._deliver)

    def submit(self, kind: str, fn: Callable[[], Any], on_done: Callable[[Any], None],
               on_error: Callable[[str], None]) -> None:
        if self._closed:
            return  # the window is closing: nothing new starts
        generation = self._generation.get(kind, 0) + 1
        self._generation[kind] = generation

        def job():
            try:
                self._done.emit(on_done, fn(), generation, kind)
            except BaseException as exc:  # noqa: BLE001 - reported to the person
                self._done.emit(on_error, describe_failure(exc), generation, kind)

        self._waiting.append(job)
        if len(self._waiting) == 1:
            self._rounds_left = 2
            self._post_start()

    def _post_start(self) -> None:
        QCoreApplication.postEvent(self, QEvent(_START_JOBS), Qt.EventPriority.LowEventPriority.value)

    def event(self, event: QEvent) -> bool:
        if event.type() != _START_JOBS:
            return super().event(event)
        self._rounds_left -= 1
        if self._rounds_left > 0:
            self._post_start()
            return True
        waiting, self._waiting = self._waiting, []
        for job in waiting:
            if not self._closed:
                self._pool.submit(job)  # even one replaced meanwhile: a job may move or delete files
        return True

    def obsolete(self, kind: str) -> Callable[[], bool]:
        """For the job about to be submitted: a test that says when a newer one replaced it."""
        generation = self._generation.get(kind, 0) + 1
        return lambda: self._closed or self._generation.get(kind, 0) != generation

    def cancel(self, kind: str) -> None:
        """Drop the result of the job of this kind still on its way."""
        self._generation[kind] = self._generation.get(kind, 0) + 1

    @Slot(object, object, int, str)
    def _deliver(self, callback, value, generation: int, kind: str) -> None:
        if not self._closed and generation == self._generation.get(kind):
            callback(value)

    def stop_accepting(self) -> None:
        """Start nothing new and deliver no more results (the window is closing); running jobs finish."""
        self._closed = True

    def shutdown(self) -> None:
        """Finish running jobs, drop queued ones, and ignore results still on their way."""
        self.stop_accepting()
        self._pool.shutdown(wait=True, cancel_futures=True)


def export_arguments(checkpoint: Path, folder: Path, formats: list[str], int8=None) -> list[str]:
    """The Python arguments of the child: the command line's `export --json`, with `--int8` and its
    settings (an engine.deploy.int8.Int8Settings) when asked."""
    arguments = ["-m", "app", "export", str(checkpoint), "--out", str(folder), "--json"]
    arguments += [f"--format={fmt}" for fmt in formats]
    if int8 is not None:
        arguments += ["--int8", f"--max-drop={int8.max_drop!r}", f"--calibration-images={int8.calibration_images}"]
    return arguments


def exported_reports(output: list[str]) -> list | None:
    """The --json list the export printed last, or None (a crash, a refusal before any file)."""
    try:
        reports = json.loads(output[-1]) if output else None
    except ValueError:
        return None
    return reports if isinstance(reports, list) else None


class ExportProcess(QObject):
    """Export in a child process running the command line's `export`.

    torch.onnx's exporter is Python-heavy and holds the GIL for long stretches: run in a thread of
    the window it stalled the GUI thread for up to 375 ms. A process shares no GIL with the window,
    and a crash of an exporter cannot take the window with it. int8 quantization runs there too.
    """

    finished = Signal(list)  # one report (a dict) per file: parity, or an int8 entry (kept, or refused: passed false)
    failed = Signal(str)  # one line

    def __init__(self, parent=None):
        super().__init__(parent)
        self._process: QProcess | None = None

    @property
    def is_running(self) -> bool:
        return self._process is not None

    def start(self, checkpoint: Path, folder: Path, formats: list[str], int8=None) -> None:
        if self._process is not None:
            self.failed.emit("An export is already running.")
            return
        process = QProcess(self)
        process.setWorkingDirectory(str(PACKAGE_ROOT))
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self._process = process
        process.start(sys.executable, export_arguments(checkpoint, folder, formats, int8))

    @Slot(int, QProcess.ExitStatus)
    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        output = bytes(process.readAllStandardOutput().data()).decode(errors="replace").strip().splitlines()
        errors = bytes(process.readAllStandardError().data()).decode(errors="replace").strip().splitlines()
        process.deleteLater()
        reports = exported_reports(output) if status == QProcess.ExitStatus.NormalExit else None
        # Exit 1 with the list printed: int8 was refused (its entry says so) after the other files passed.
        if reports and (code == 0 or any(r.get("passed") is False for r in reports if isinstance(r, dict))):
            self.finished.emit(reports)
            return
        said = [line for line in errors if line.startswith(CLI_ERROR_PREFIX)]
        if said:
            self.failed.emit(said[-1][len(CLI_ERROR_PREFIX):])
        else:  # a crash: its last line (a traceback's exception) says the most
            self.failed.emit(f"the export stopped unexpectedly ({errors[-1] if errors else f'exit code {code}'})")

    @Slot(QProcess.ProcessError)
    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self._process is not None:
            process, self._process = self._process, None
            process.deleteLater()
            self.failed.emit(f"cannot start the exporter: {process.errorString()}")

    def stop_and_wait(self, timeout_ms: int = 5_000) -> None:
        """When the window closes: an export left half-done is not worth waiting for."""
        if self._process is not None:
            process, self._process = self._process, None
            process.kill()
            process.waitForFinished(timeout_ms)
