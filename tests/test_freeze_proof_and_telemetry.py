"""Proof in the run: freeze integrity (bitwise), per-layer telemetry, stop during set-up, the run
folder's versions, what continuing means for the schedule, and CLI flags over a project file."""

import json
import threading

import pytest
import torch

from app.cli import main
from engine.config import PlanConfig, PlanEdit, save_project
from engine.errors import FrozenTensorsChanged
from engine.events import Callbacks, TrainingControl
from engine.training.integrity import fingerprint
from engine.runs.run_folder import RunFolder, latest_run
from engine.training.trainer import fit
from tests.helpers import Recorder, make_config


def feature_extraction(demo_dir, out, weights, **overrides):
    return make_config(demo_dir, out, weights=str(weights), augment=overrides.pop("augment", "none"),
                       plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2), **overrides)


# --- freeze integrity ---------------------------------------------------------------------------


def test_feature_extraction_checks_every_backbone_tensor_and_telemetry_shows_only_fc_moving(
        demo_dir, tmp_path, resnet18_weights_file):
    recorder = Recorder()
    result = fit(feature_extraction(demo_dir, tmp_path / "fe", resnet18_weights_file, epochs=2), recorder)
    source = torch.load(resnet18_weights_file, weights_only=True)
    backbone_tensors = [k for k in source if not k.startswith("fc.")]  # parameters and buffers
    for event in recorder.epochs:
        assert event.integrity.checked == len(backbone_tensors) == 120
        assert event.integrity.changed == ()
    assert result.integrity.intact and result.integrity.checked == 120
    lines = RunFolder(tmp_path / "fe").read_metrics()
    assert [line["integrity"] for line in lines] == [{"checked": 120, "changed": []}] * 2
    record = RunFolder(tmp_path / "fe").read_record()
    assert record["integrity"]["verdict"] == "unchanged" and record["integrity"]["last_checked_epoch"] == 2
    layers = lines[-1]["layers"]
    assert layers["fc"]["update_ratio"] > 0 and layers["fc"]["grad_norm"] > 0
    frozen = [name for name in layers if name != "fc"]
    assert "layer4.1" in frozen and "conv1" in frozen
    assert all(layers[name]["update_ratio"] == 0.0 for name in frozen)
    assert all(layers[name]["zero_grad_fraction"] == 1.0 for name in frozen)


@pytest.mark.slow
@pytest.mark.parametrize("tensor", ["layer1.0.conv1.weight", "layer2.1.bn2.running_mean"])
def test_a_frozen_tensor_changed_from_outside_is_caught_at_the_end_of_that_epoch(
        demo_dir, tmp_path, resnet18_weights_file, tensor, monkeypatch):
    import engine.training.shared_parts as run_parts

    build = run_parts.build_model
    calls = {"forward": 0}

    def build_with_interference(*args, **kwargs):
        built = build(*args, **kwargs)
        target = dict(built.model.state_dict(keep_vars=True))[tensor]

        def nudge(module, inputs, output):
            if not module.training:
                return  # validation and the checkpoint's output probe run in eval mode: training steps are counted
            calls["forward"] += 1
            if calls["forward"] == 5:  # during epoch 2 (3 or 4 steps an epoch), not before
                with torch.no_grad():
                    target[(0,) * target.dim()] += 1e-3

        built.model.register_forward_hook(nudge)
        return built

    monkeypatch.setattr(run_parts, "build_model", build_with_interference)
    recorder = Recorder()
    config = feature_extraction(demo_dir, tmp_path / "bad", resnet18_weights_file, epochs=3, feature_cache=False)
    with pytest.raises(FrozenTensorsChanged, match=rf"during epoch 2: {tensor.replace('.', '[.]')}"):
        fit(config, recorder)
    assert [e.integrity.changed for e in recorder.epochs] == [(), (tensor,)]
    lines = RunFolder(tmp_path / "bad").read_metrics()
    assert lines[-1]["integrity"]["changed"] == [tensor]
    assert RunFolder(tmp_path / "bad").read_record()["integrity"]["verdict"] == "changed"
    # The defective epoch is not saved as the best: the checkpoint is still epoch 1's.
    assert torch.load(tmp_path / "bad" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_norm_layers_let_update_are_not_promised_but_their_weights_are(demo_dir, tmp_path, resnet18_weights_file):
    plan = PlanConfig(strategy="feature-extraction", edits=(PlanEdit("layer4", train_norm=True),))
    recorder = Recorder()
    fit(make_config(demo_dir, tmp_path / "tn", weights=str(resnet18_weights_file), augment="none", plan=plan,
                    epochs=1), recorder)
    # layer4 has 5 norm layers x 3 buffers whose statistics may now change; their weights may not.
    assert recorder.epochs[0].integrity.checked == 120 - 15
    assert recorder.epochs[0].integrity.intact


def test_fingerprint_sees_a_single_bit():
    t = torch.randn(1000)
    before = fingerprint(t)
    t.view(torch.int32)[500] ^= 1
    assert fingerprint(t) != before
    assert fingerprint(torch.tensor(3)) == fingerprint(torch.tensor(3))


def test_telemetry_can_be_switched_off(demo_dir, tmp_path):
    recorder = Recorder()
    fit(make_config(demo_dir, tmp_path / "off", epochs=1, telemetry=False), recorder)
    assert recorder.epochs[0].layers == {} and all(b.layers == {} for b in recorder.batches)
    assert "layers" not in RunFolder(tmp_path / "off").read_metrics()[0]


def test_fine_tuning_telemetry_reports_every_first_and_second_level_module(demo_dir, tmp_path):
    recorder = Recorder()
    fit(make_config(demo_dir, tmp_path / "ft", epochs=1), recorder)
    layers = recorder.epochs[0].layers
    assert {"conv1", "bn1", "layer1", "layer1.0", "layer4.1", "fc"} <= set(layers)
    assert all(s.update_ratio > 0 for s in layers.values())
    assert any(b.layers for b in recorder.batches)  # a live sample reaches the window


# --- stop during set-up ----------------------------------------------------------------------------


class StopWhen(Callbacks):
    def __init__(self, control, status_prefix):
        self.control, self.prefix, self.seen = control, status_prefix, []

    def on_status(self, text, done=0, total=0):
        self.seen.append(text)
        if text.startswith(self.prefix) and done >= 1:
            self.control.stop()


def test_stop_while_trunk_features_are_computed_ends_as_stopped(demo_dir, tmp_path, resnet18_weights_file,
                                                               monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))  # features not cached by other tests
    control = TrainingControl()
    callbacks = StopWhen(control, "Computing training features")
    result = fit(feature_extraction(demo_dir, tmp_path / "stop", resnet18_weights_file), callbacks, control)
    assert result.stopped == "user" and result.epochs_run == 0 and result.checkpoint is None
    assert "Computing training features" in callbacks.seen


@pytest.mark.slow
def test_stop_while_images_decode_takes_effect_at_once(tmp_path):
    from engine.data.demo import write_demo_dataset

    data = write_demo_dataset(tmp_path / "big", classes=2, per_class=400, size=96, seed=0)
    control = TrainingControl()
    callbacks = StopWhen(control, "Decoding training images")
    result = fit(make_config(data, tmp_path / "run"), callbacks, control)
    assert result.stopped == "user" and result.epochs_run == 0
    decoded = [t for t in callbacks.seen if t.startswith("Decoding")]
    assert len(decoded) < 50  # it stopped long before the 640 training images were decoded


# --- the run folder --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_resume_file_of_an_unknown_version_is_refused_with_one_line(demo_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fit(make_config(demo_dir, run, epochs=1))
    state = torch.load(run / "resume.pt", weights_only=True)
    assert state["format_version"] == 2
    state["format_version"] = 99
    torch.save(state, run / "resume.pt")
    code = main(["train", "--resume", str(run), "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "newer Transfer Studio (format 99" in err[0] and "Traceback" not in err[0]


def test_latest_run_is_found_again(demo_dir, tmp_path):
    import os

    for age, name in enumerate(["b", "a"]):
        folder = RunFolder(tmp_path / "runs" / name)
        folder.write_record({"config": make_config(demo_dir, folder.path).to_dict()})
        os.utime(folder.record_path, (1e9 - age, 1e9 - age))
    (tmp_path / "runs" / "not-a-run").mkdir()
    assert latest_run(tmp_path / "runs").path.name == "b"
    assert latest_run(tmp_path / "runs").load_config().model.arch == "resnet18"
    assert latest_run(tmp_path / "none") is None


@pytest.mark.slow
def test_continuing_a_finished_run_starts_a_new_schedule_segment(demo_dir, tmp_path, resnet18_weights_file):
    run = tmp_path / "run"
    first = Recorder()
    fit(feature_extraction(demo_dir, run, resnet18_weights_file, epochs=2, schedule="cosine"), first)
    more = Recorder()
    fit(feature_extraction(demo_dir, run, resnet18_weights_file, epochs=3, schedule="cosine"), more, resume=True)
    last_lr = first.batches[-1].lrs["base"]
    restart_lr = more.batches[0].lrs["base"]
    assert last_lr < 1e-3 and restart_lr == pytest.approx(1e-2)  # a warm restart, not a jump into the tail
    added = [b.lrs["base"] for b in more.batches]
    assert added == sorted(added, reverse=True) and added[-1] < restart_lr / 5  # and decays over the added epoch


# --- the CLI: flags over a project file ---------------------------------------------------------


@pytest.mark.slow
def test_flags_given_with_a_project_override_its_values(demo_dir, tmp_path, capsys):
    project = tmp_path / "p.tsproj.json"
    save_project(project, make_config(demo_dir, tmp_path / "unused", epochs=3))
    out = tmp_path / "run"
    code = main(["train", "--project", str(project), "--epochs", "1", "--base-lr", "0.005", "--out", str(out),
                 "--device", "cpu"])
    assert code == 0
    config = RunFolder(out).load_config()
    assert config.train.epochs == 1 and config.plan.base_lr == 0.005
    assert config.data.image_size == 32  # from the project: not given on the command line
    assert len(RunFolder(out).read_metrics()) == 1


def test_flags_that_would_change_a_continued_run_are_refused(demo_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fit(make_config(demo_dir, run, epochs=1))
    code = main(["train", "--resume", str(run), "--epochs", "2", "--base-lr", "0.1", "--model", "resnet34"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--base-lr, --model" in err[0] and "only --epochs" in err[0]


def test_pause_and_stop_still_work_within_a_batch(demo_dir, tmp_path):
    control = TrainingControl()

    class PauseThenStop(Recorder):
        def on_batch_end(self, event):
            super().on_batch_end(event)
            if len(self.batches) == 1:
                control.pause()
                threading.Timer(0.2, control.stop).start()

    recorder = PauseThenStop()
    result = fit(make_config(demo_dir, tmp_path / "p", epochs=3), recorder, control)
    assert result.stopped == "user" and len(recorder.batches) == 1
    assert json.loads((tmp_path / "p" / "run.json").read_text())["result"]["stopped"] == "user"


def test_a_convolutional_head_trains_on_images_not_cached_features(demo_dir, tmp_path):
    from dataclasses import replace

    config = make_config(demo_dir, tmp_path / "sq", augment="none", epochs=1,
                         plan=PlanConfig(strategy="feature-extraction"))
    config = replace(config, model=replace(config.model, arch="squeezenet1_1"))
    recorder = Recorder()
    result = fit(config, recorder)
    assert result.epochs_run == 1
    assert recorder.started[0].feature_cache == "feature cache off: squeezenet1_1's head is a convolution before pooling"
