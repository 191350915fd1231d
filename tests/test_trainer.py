"""Training runs end to end on CPU: outputs, frozen tensors, stop/pause, NaN, reproducibility."""

import json
import threading

import pytest
import torch
import torchvision

from engine.config import PlanConfig, PlanEdit
from engine.errors import TrainingDiverged
from engine.events import Callbacks, TrainingControl
from engine.training.trainer import fit
from tests.helpers import Recorder, make_config


@pytest.mark.slow
def test_two_epochs_write_a_plain_torchvision_checkpoint_and_metrics(demo_dir, tmp_path):
    recorder = Recorder()
    result = fit(make_config(demo_dir, tmp_path / "run"), recorder)
    assert result.epochs_run == 2 and result.stopped == "completed"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    model = torchvision.models.resnet18(num_classes=4)
    model.load_state_dict(ckpt["model"], strict=True)
    assert ckpt["class_names"] == ["circle", "cross", "square", "triangle"]
    assert set(ckpt["preprocessing"]) == {"resize", "crop", "mean", "std", "interpolation"} and ckpt["preprocessing"]["crop"] == 32
    assert ckpt["format_version"] == 1 and ckpt["arch"] == "resnet18" and "plan" in ckpt and "metrics" in ckpt
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "images_per_second", "lr"):
        assert key in first
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["model"]["arch"] == "resnet18" and run["plan"]["base_lr"] == 1e-3
    assert len(recorder.epochs) == 2 and recorder.batches
    assert len(recorder.epochs[0].confusion_matrix) == 4
    assert sum(map(sum, recorder.epochs[0].confusion_matrix)) == 12  # the validation images: round(16 * 0.2) per class


@pytest.mark.slow
@pytest.mark.parametrize("feature_cache", [True, False])
def test_feature_extraction_keeps_every_backbone_tensor_bit_identical(demo_dir, tmp_path, resnet18_weights_file,
                                                                      feature_cache):
    # Statistics as loaded (--adapt-norm auto may adapt them: tests/test_adapt_norm_auto.py).
    config = make_config(demo_dir, tmp_path / "fe", weights=str(resnet18_weights_file), augment="none",
                         plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2), feature_cache=feature_cache,
                         adapt_norm="off")
    recorder = Recorder()
    fit(config, recorder)
    assert recorder.started[0].feature_cache.startswith("feature cache on" if feature_cache else "feature cache off")
    source = torch.load(resnet18_weights_file, weights_only=True)
    saved = torch.load(tmp_path / "fe" / "checkpoint.pt", weights_only=True)["model"]
    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) == len(saved) - 2
    changed = [k for k in backbone if not torch.equal(saved[k], source[k])]
    assert changed == []
    assert not torch.equal(saved["fc.bias"], torch.zeros(4))


@pytest.mark.slow
def test_feature_cache_gives_the_same_accuracy_as_the_uncached_path(demo_dir, tmp_path, resnet18_weights_file):
    accuracies = []
    for cached in (True, False):
        config = make_config(demo_dir, tmp_path / str(cached), weights=str(resnet18_weights_file), augment="none",
                             plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2), feature_cache=cached,
                             epochs=3, schedule="constant", adapt_norm="off")  # auto measures with the cache only
        accuracies.append(fit(config).best_val_accuracy)
    assert accuracies[0] == pytest.approx(accuracies[1], abs=1 / 16 + 1e-9)  # at most one image apart


@pytest.mark.slow
def test_gradual_unfreezing_adds_groups_mid_run(demo_dir, tmp_path):
    recorder = Recorder()
    fit(make_config(demo_dir, tmp_path / "g", epochs=3, plan=PlanConfig(strategy="gradual")), recorder)
    trainable = [e.trainable_params for e in recorder.epochs]
    assert trainable[0] == 2052 and trainable[0] < trainable[1] < trainable[2]
    assert recorder.epochs[1].newly_unfrozen and len(recorder.epochs[2].lr) > len(recorder.epochs[0].lr)


@pytest.mark.slow
def test_cpu_training_is_reproducible(demo_dir, tmp_path):
    states = []
    for name in ("a", "b"):
        fit(make_config(demo_dir, tmp_path / name, augment="standard", epochs=1))
        states.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
def test_stop_takes_effect_within_one_batch_and_pause_blocks(demo_dir, tmp_path):
    control = TrainingControl()

    class StopAfterThree(Callbacks):
        steps = 0

        def on_batch_end(self, event):
            self.steps = event.global_step
            if event.global_step == 3:
                control.stop()

    cb = StopAfterThree()
    config = make_config(demo_dir, tmp_path / "s", epochs=5, max_batch_events_per_second=1e6)
    result = fit(config, cb, control)
    assert result.stopped == "user" and cb.steps == 3

    control = TrainingControl()
    control.pause()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (fit(make_config(demo_dir, tmp_path / "p", epochs=1), None, control),
                                              done.set()))
    thread.start()
    assert not done.wait(timeout=4.0)  # paused: no progress
    control.resume()
    assert done.wait(timeout=60)
    thread.join()


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(demo_dir, tmp_path):
    class PoisonSecondEpoch(Callbacks):
        def __init__(self):
            self.model_params = None

        def on_epoch_end(self, event):
            if event.epoch == 1:
                PoisonSecondEpoch.poison = True

    original_cross_entropy = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, target):
        loss = original_cross_entropy(self, logits, target)
        return loss * float("nan") if getattr(PoisonSecondEpoch, "poison", False) else loss

    PoisonSecondEpoch.poison = False
    torch.nn.CrossEntropyLoss.forward = poisoned
    try:
        with pytest.raises(TrainingDiverged, match=r"nan at epoch 2.*last good checkpoint"):
            fit(make_config(demo_dir, tmp_path / "nan", epochs=3), PoisonSecondEpoch())
    finally:
        torch.nn.CrossEntropyLoss.forward = original_cross_entropy
    ckpt = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())


def test_plan_edits_reach_the_optimizer(demo_dir, tmp_path):
    plan = PlanConfig(strategy="fine-tune", edits=(PlanEdit("layer1", frozen=True), PlanEdit("fc", lr=5e-3)))
    recorder = Recorder()
    fit(make_config(demo_dir, tmp_path / "e", epochs=1, schedule="constant", plan=plan), recorder)
    assert recorder.epochs[0].lr == {"base": 1e-3, "fc": 5e-3}
    assert recorder.epochs[0].trainable_params == 11_178_564 - 147_968


@pytest.mark.slow
def test_trunk_features_are_reused_from_the_disk_cache_until_a_file_changes(demo_dir, tmp_path, resnet18_weights_file,
                                                                          monkeypatch):
    import os
    import shutil

    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    notes, accuracies = [], []
    for run in ("first", "second", "after-edit"):
        if run == "after-edit":
            victim = next((data / "circle").glob("*.png"))
            os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
        recorder = Recorder()
        config = make_config(data, tmp_path / run, weights=str(resnet18_weights_file), augment="none",
                             plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2), epochs=2,
                             adapt_norm="off")  # one feature set per dataset (auto adds the adapted one)
        accuracies.append(fit(config, recorder).best_val_accuracy)
        notes.append(recorder.started[0].feature_cache)
    assert "disk cache" not in notes[0] and "loaded from the disk cache" in notes[1] and "disk cache" not in notes[2]
    assert accuracies[0] == accuracies[1] == accuracies[2]
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2


@pytest.mark.slow
def test_compile_option_trains_through_the_compiled_module(demo_dir, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def recording_compile(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="eager")  # the plumbing, without minutes of C++ builds

    monkeypatch.setattr(torch, "compile", recording_compile)
    statuses = []

    class Statuses(Callbacks):
        def on_status(self, text, done=0, total=0):
            statuses.append(text)

    result = fit(make_config(demo_dir, tmp_path / "c", epochs=1, compile=True), Statuses())
    assert len(compiled) == 1 and isinstance(compiled[0], torchvision.models.ResNet)
    assert any(s.startswith("Compiling") for s in statuses)
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in state)  # plain torchvision keys still


def test_early_stopping_after_patience_epochs_without_improvement(demo_dir, tmp_path, resnet18_weights_file):
    # An LR so small that the head's weights cannot change in float32: nothing ever improves.
    config = make_config(demo_dir, tmp_path / "es", weights=str(resnet18_weights_file), augment="none", epochs=10,
                         plan=PlanConfig(strategy="feature-extraction", base_lr=1e-30), early_stopping_patience=2,
                         schedule="constant", adapt_norm="off")  # nothing to measure: no head ever improves
    result = fit(config)
    assert result.stopped == "early-stopping" and result.epochs_run == 3 and result.best_epoch == 1
