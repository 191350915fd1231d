"""Listeners own their state: each saves and restores it through resume.pt, so a resumed run ends
exactly as the uninterrupted one would (early stopping's patience included)."""

from types import SimpleNamespace

import pytest
import torch

from engine.config import PlanConfig
from engine.events import Callbacks, TrainingControl
from engine.listener import Listener, listener_states, load_listener_states
from engine.plan.plan import Plan, Setting
from engine.runs.run_folder import RunFolder
from engine.training.integrity import FreezeIntegrity, fingerprint
from engine.training.listeners import EarlyStopping
from engine.training.trainer import fit
from tests.helpers import make_config

# Measured, not reproduced: wall-clock figures, and telemetry, which samples steps by wall clock.
TIMING_FIELDS = ("seconds", "images_per_second", "data_seconds", "compute_seconds", "layers")


def early_stopping_config(data, out):
    # An LR this high makes the head's validation loss go up and down: bests, then epochs without one.
    return make_config(data, out, augment="none", epochs=12, early_stopping_patience=2, schedule="constant",
                       plan=PlanConfig(strategy="feature-extraction", base_lr=0.3))


def metrics_without_timing(folder: RunFolder) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in folder.read_metrics()]


class StopAfterEpoch(Callbacks):
    def __init__(self, control: TrainingControl, epoch: int) -> None:
        self.control, self.epoch = control, epoch

    def on_epoch_end(self, event):
        if event.epoch == self.epoch:
            self.control.stop()


@pytest.mark.slow
def test_a_run_resumed_with_patience_used_stops_where_the_uninterrupted_run_stopped(demo_dir, tmp_path):
    whole = fit(early_stopping_config(demo_dir, tmp_path / "whole"))
    stop = whole.epochs_run
    assert whole.stopped == "early-stopping" and stop < 12
    expected = metrics_without_timing(RunFolder(tmp_path / "whole"))
    # Patience 2: the last two epochs had no best, so after the one before the end the count was 1.
    assert [line["is_best"] for line in expected[-2:]] == [False, False]

    control = TrainingControl()
    cut = fit(early_stopping_config(demo_dir, tmp_path / "cut"), StopAfterEpoch(control, stop - 1), control)
    assert cut.stopped == "user" and cut.epochs_run == stop - 1
    saved = torch.load(tmp_path / "cut" / "resume.pt", weights_only=True)
    assert saved["listeners"]["EarlyStopping"] == {"epochs_since_best": 1}  # stopped with patience used

    resumed = fit(early_stopping_config(demo_dir, tmp_path / "cut"), resume=True)
    assert resumed.stopped == "early-stopping" and resumed.epochs_run == stop
    assert resumed.best_epoch == whole.best_epoch and resumed.best_val_accuracy == whole.best_val_accuracy
    assert metrics_without_timing(RunFolder(tmp_path / "cut")) == expected


def round_trip(state: dict, tmp_path) -> dict:
    """Through a file, loaded as resume.pt is: only plain values survive weights_only=True."""
    torch.save(state, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=True)


def test_early_stopping_state_round_trips(tmp_path):
    before = EarlyStopping(patience=3)
    for is_best in (True, False, False):
        before.on_epoch_end(SimpleNamespace(is_best=is_best))
    after = EarlyStopping(patience=3)
    after.load_state_dict(round_trip(before.state_dict(), tmp_path))
    assert after.state_dict() == before.state_dict() == {"epochs_since_best": 2}
    after.on_epoch_end(SimpleNamespace(is_best=False))  # the third epoch without a best, as before the stop
    assert after.stop_reason == "early-stopping"


def test_freeze_integrity_state_round_trips(tmp_path):
    model = torch.nn.Linear(2, 2)
    before = FreezeIntegrity(model)
    before.fingerprints = {name: fingerprint(t) for name, t in model.state_dict().items()}
    after = FreezeIntegrity(model)
    after.load_state_dict(round_trip(before.state_dict(), tmp_path))
    assert after.fingerprints == before.fingerprints and after.state_dict() == before.state_dict()


def test_a_listener_without_a_saved_state_stays_fresh_and_stateless_ones_save_nothing():
    counting = EarlyStopping(patience=2)
    counting.epochs_since_best = 1
    fresh = EarlyStopping(patience=2)
    load_listener_states([fresh, Listener()], {"FreezeIntegrity": {"fingerprints": {}}})
    assert fresh.epochs_since_best == 0
    assert listener_states([counting, Listener()]) == {"EarlyStopping": {"epochs_since_best": 1}}
    with pytest.raises(ValueError, match="EarlyStopping"):
        listener_states([counting, EarlyStopping(patience=5)])


def test_a_resume_file_from_before_listener_states_is_still_read(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    fingerprints = {"fc.weight": "0" * 32}
    torch.save({"format_version": 2, "epoch": 1, "model": {}, "integrity": fingerprints}, folder.resume_path)
    state = folder.read_resume_state()
    assert state["listeners"] == {"FreezeIntegrity": {"fingerprints": fingerprints}} and "integrity" not in state
    torch.save({"format_version": 1, "epoch": 1, "model": {}}, folder.resume_path)
    assert folder.read_resume_state()["listeners"] == {}  # every listener starts fresh


def test_fingerprints_stored_by_an_older_run_still_check_its_tensors(tmp_path):
    """resume.pt of a run from before the SHA-256 fingerprints holds BLAKE2b ones: a continued run
    compares each tensor with it the same way, so nothing is reported changed that is not."""
    import hashlib

    def blake2b_fingerprint(t):  # the scheme those runs stored
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    model = torch.nn.Linear(2, 2)
    model.requires_grad_(False)
    plan = Plan({"": Setting(frozen=True, lr=1e-3)})
    integrity = FreezeIntegrity(model)
    integrity.load_state_dict(round_trip({"fingerprints": {name: blake2b_fingerprint(t) for name, t in
                                                           model.state_dict().items()}}, tmp_path))
    integrity.on_epoch_start(1, plan)
    assert integrity.check(1).intact
    with torch.no_grad():
        model.bias[0] += 1
    assert integrity.check(2).changed == ("bias",)
    assert fingerprint(model.weight).startswith("sha256:")
