"""The CalibrationRecord listener: at every new best epoch, the validation pass the loop just did is
kept as val_logits.pt and calibrated (engine.model.calibration: temperature, ECE before and after, the
unknown threshold); run.json records it as "calibration", and the best checkpoint carries it
(BestCheckpoint reads `current`). Declared before the checkpoint, so both describe the same epoch."""

from __future__ import annotations

from typing import Callable, Sequence

from engine.errors import RunFailed
from engine.events import EpochEvent, RunStarted
from engine.listener import Listener
from engine.model.calibration import calibrate
from engine.runs.predictions import relative_path
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import write_val_logits
from engine.training.validation_records import ValidationOutputs


class CalibrationRecord(Listener):
    def __init__(self, folder: RunFolder, class_names: Sequence[str], data_root: str,
                 latest: Callable[[], ValidationOutputs | None]) -> None:
        self.folder, self.class_names, self.data_root, self.latest = folder, list(class_names), data_root, latest
        self.current: dict | None = None  # the best epoch's calibration, for its checkpoint

    def on_fit_start(self, started: RunStarted) -> None:
        if self.current is not None:  # a continued run: run.json was written anew at set-up
            self._record()

    def on_epoch_end(self, event: EpochEvent) -> None:
        if not event.is_best:
            return
        outputs = self.latest()
        if outputs is None or len(outputs.labels) == 0:  # no validation images: nothing to calibrate on
            self.current = None
            self.folder.val_logits_path.unlink(missing_ok=True)
            return
        self.current = {"epoch": event.epoch, **calibrate(outputs.logits, outputs.labels)}
        paths = [relative_path(s.path, self.data_root) for s in outputs.samples] if outputs.samples else []
        try:
            write_val_logits(self.folder.val_logits_path, event.epoch, self.class_names, paths,
                             outputs.labels, outputs.logits)
            self._record()
        except OSError as exc:  # a full or read-only disk ends the run as the checkpoint's would
            raise RunFailed(f"could not save {exc.filename or 'the calibration'}: {exc.strerror or exc}; "
                            f"the run is stopped and the last files written completely are kept") from None

    def _record(self) -> None:
        self.folder.update_record(calibration=self.current)

    # The best epoch's calibration survives a resume, as its checkpoint does.
    def state_dict(self) -> dict:
        return {"current": self.current} if self.current else {}

    def load_state_dict(self, state: dict) -> None:
        self.current = state.get("current")
