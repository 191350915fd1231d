"""A run's calibration as Insight shows it: the temperature and ECE before and after, as run.json
records them, and the reliability diagram's bins (each confidence bin's mean confidence against its
accuracy) before and after the temperature, from the same best epoch's validation logits
(val_logits.pt). No Qt: the window draws what this returns (widgets/reliability.py)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UserError
from engine.model.calibration import ECE_BINS, ReliabilityBin, calibrated_probabilities, reliability_bins
from engine.runs.records import RecordedCalibration
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import read_val_logits


@dataclass(frozen=True)
class RunCalibration:
    recorded: RecordedCalibration  # run.json's figures: what is shown as numbers
    before: tuple[ReliabilityBin, ...]  # softmax of the logits
    after: tuple[ReliabilityBin, ...]  # softmax of the logits / T

    @property
    def images(self) -> int:
        return sum(b.count for b in self.before)


def run_calibration(folder: RunFolder) -> RunCalibration:
    """The run's calibration; a UserError says in one line why there is none to show."""
    recorded = folder.read_run().calibration
    if recorded is None:
        raise UserError(f"{folder.path.name} recorded no calibration (a run from before calibrated probabilities, "
                        f"or one without validation images)")
    logits = read_val_logits(folder.val_logits_path)
    if recorded.epoch is not None and logits.epoch != recorded.epoch:
        raise UserError(f"{folder.val_logits_path.name} is of epoch {logits.epoch}, run.json's calibration of epoch "
                        f"{recorded.epoch}: the run folder was changed by hand")
    bins = recorded.ece_bins or ECE_BINS
    before = reliability_bins(calibrated_probabilities(logits.logits), logits.labels, bins)
    after = reliability_bins(calibrated_probabilities(logits.logits, recorded.temperature), logits.labels, bins)
    return RunCalibration(recorded, tuple(before), tuple(after))
