"""A one-line progress bar on a terminal stream for the command line (images/s and ETA)."""

from __future__ import annotations

import sys
import time

from engine.events import BatchEvent, Callbacks, EpochEvent, RunStarted, format_duration


class ProgressPrinter(Callbacks):
    """Progress is a courtesy: a stream that cannot be written (a full device, a closed terminal,
    none at all) ends the printing, never the run."""

    def __init__(self, stream=sys.stderr, width: int = 28):
        self.stream = stream
        self.width = width
        self.interactive = _is_terminal(stream)
        self._last_status = 0.0
        self._open_line = False

    def _write_line(self, text: str, final: bool) -> None:
        if self.interactive:
            self._emit("\r\033[K" + text + ("\n" if final else ""))
            self._open_line = not final
        elif final:
            self._emit(text + "\n")

    def _emit(self, text: str) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.stream = None  # the first failure ends the printing; the run goes on

    def on_status(self, text: str, done: int = 0, total: int = 0) -> None:
        if not self.interactive:
            return  # a log file gets the epoch lines, not every preparation step
        now = time.monotonic()
        final = total == 0 or done == total
        if not final and now - self._last_status < 0.2:
            return
        self._last_status = now
        self._write_line(f"{text} {done}/{total}" if total else text, final)

    def on_run_started(self, event: RunStarted) -> None:
        for note in event.notes:
            self._write_line(note, True)
        self._write_line(
            f"{event.device_name} · {event.precision} · {event.train_images} train / {event.val_images} val images · "
            f"trainable {event.trainable_params:,} / {event.total_params:,} · {event.feature_cache}", True)

    def on_batch_end(self, event: BatchEvent) -> None:
        frac = event.global_step / max(1, event.total_steps)
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        self._write_line(
            f"epoch {event.epoch}/{event.epochs} [{bar}] {event.step}/{event.steps} loss {event.loss:.4f} "
            f"{event.images_per_second:,.0f} img/s ETA {format_duration(event.eta_seconds)}", False)

    def on_epoch_end(self, event: EpochEvent) -> None:
        val = (f"val loss {event.val_loss:.4f} acc {event.val_accuracy:.4f}"
               if event.val_accuracy is not None else "no validation set")
        if event.task != "single-label" and event.val_loss is not None:  # the task's own metrics
            shown = " ".join(f"{name} {value:.4f}" for name, value in event.val_metrics.items() if value is not None)
            val = f"val loss {event.val_loss:.4f} {shown}"
        train_acc = f" acc {event.train_accuracy:.4f}" if event.train_accuracy is not None else ""
        thawed = f" · unfrozen: {', '.join(event.newly_unfrozen)}" if event.newly_unfrozen else ""
        proof = ""
        if event.integrity is not None and event.integrity.checked:
            proof = (f" · frozen: {event.integrity.checked} tensors unchanged" if event.integrity.intact
                     else f" · FROZEN TENSORS CHANGED: {len(event.integrity.changed)}")
        self._write_line(
            f"epoch {event.epoch}/{event.epochs} train loss {event.train_loss:.4f}{train_acc} · "
            f"{val} · {event.seconds:.1f}s ({event.data_seconds:.1f}s data) · {event.images_per_second:,.0f} img/s"
            f"{' · best' if event.is_best else ''}{thawed}{proof}", True)

    def close(self) -> None:
        if self._open_line:
            self._emit("\n")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False
