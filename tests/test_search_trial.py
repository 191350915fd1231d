"""A search trial's run (engine.training.search_trial): it trains exactly as `train`, keeps every proof
and what its folder needs, writes its best epoch's records once at the end, and takes what every
trial computes alike (model, features, the freeze proof's reference) from parts built once."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import engine.training.integrity as integrity_module
import engine.training.shared_parts as shared_parts
from engine.config import PlanConfig
from engine.errors import FrozenTensorsChanged
from engine.model.checkpoint import load_checkpoint
from engine.plan.plan import build_plan
from engine.runs import embeddings
from engine.runs.run_folder import RunFolder
from engine.search.pruning import PRUNED, PruneListener
from engine.search.worker import trial_settings
from engine.training.integrity import FreezeIntegrity, same_bits
from engine.training.search_trial import SearchTrial
from engine.training.shared_parts import SharedParts
from engine.training.trainer import fit
from tests.helpers import make_config

# What differs between two runs of the same settings: wall-clock figures.
CLOCK = {"seconds", "images_per_second", "data_seconds", "compute_seconds"}


def head_only(demo_dir, out, weights, **overrides):
    """A head-only run on cached features, with the settings a search gives its trials."""
    return trial_settings(make_config(demo_dir, out, weights=str(weights), augment="none",
                                      plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2),
                                      **{"adapt_norm": "off", **overrides}))


def run_trial(config, trial: SearchTrial, **kwargs):
    return fit(config, scan=trial.parts.scan(config), trial=trial, **kwargs)


def without_clock(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in CLOCK} for line in lines]


@pytest.mark.slow
def test_a_trial_trains_as_train_does_and_its_folder_holds_what_a_run_needs(demo_dir, tmp_path,
                                                                           resnet18_weights_file):
    plain = fit(head_only(demo_dir, tmp_path / "plain", resnet18_weights_file, epochs=2))
    trial = SearchTrial(SharedParts())
    first = run_trial(head_only(demo_dir, tmp_path / "t1", resnet18_weights_file, epochs=2), trial)
    again = run_trial(head_only(demo_dir, tmp_path / "t2", resnet18_weights_file, epochs=2), trial)  # shared parts
    expected = without_clock(RunFolder(plain.run_dir).read_metrics())
    plain_checkpoint = load_checkpoint(plain.checkpoint)
    for result in (first, again):
        folder = RunFolder(result.run_dir)
        assert without_clock(folder.read_metrics()) == expected  # every epoch, its integrity verdict included
        assert (result.best_epoch, result.best_val_accuracy) == (plain.best_epoch, plain.best_val_accuracy)
        checkpoint = load_checkpoint(result.checkpoint)  # its weights hash verified
        assert checkpoint["epoch"] == plain.best_epoch
        assert all(same_bits(checkpoint["model"][k], v) for k, v in plain_checkpoint["model"].items())
        assert checkpoint["calibration"] == plain_checkpoint["calibration"]
        record = folder.read_record()
        assert record["status"] == "finished" and record["calibration"] == checkpoint["calibration"]
        assert record["integrity"] == {"verdict": "unchanged", "checked": 120, "changed": [], "last_checked_epoch": 2}
        for path in (folder.predictions_path, folder.embeddings_path, folder.val_logits_path):
            assert path.read_bytes() == (RunFolder(plain.run_dir).path / path.name).read_bytes(), path.name
        # No resume state (a trial is drawn again, never continued), no TensorBoard unless asked.
        assert not folder.resume_path.exists() and not folder.tensorboard_path.exists()


def test_a_search_worker_builds_the_model_reads_the_features_and_hashes_the_frozen_tensors_once(
        demo_dir, tmp_path, resnet18_weights_file, monkeypatch):
    fit(head_only(demo_dir, tmp_path / "warm", resnet18_weights_file, epochs=1))  # features in the disk cache
    calls = {"build": 0, "load": 0, "fingerprint": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(shared_parts, "build_model", counted("build", shared_parts.build_model))
    monkeypatch.setattr(shared_parts, "load_cached_features", counted("load", shared_parts.load_cached_features))
    monkeypatch.setattr(integrity_module, "fingerprint", counted("fingerprint", integrity_module.fingerprint))
    trial = SearchTrial(SharedParts())
    results = []
    for number, lr in enumerate((1e-2, 3e-2, 1e-3)):
        config = head_only(demo_dir, tmp_path / f"t{number}", resnet18_weights_file, epochs=2)
        results.append(run_trial(replace(config, plan=replace(config.plan, base_lr=lr)), trial))
        if number == 0:
            hashed = calls["fingerprint"]
    assert calls["build"] == 1 and calls["load"] == 1
    assert hashed == 120 and calls["fingerprint"] == hashed  # the later trials compare with the reference
    assert all(r.integrity.intact and r.integrity.checked == 120 for r in results)


def test_a_frozen_tensor_changed_in_a_trial_is_caught_against_the_shared_reference(
        demo_dir, tmp_path, resnet18_weights_file, monkeypatch):
    build = shared_parts.build_model
    calls = {"forward": 0}

    def build_with_interference(*args, **kwargs):
        built = build(*args, **kwargs)

        def nudge(module, inputs, output):  # on the trial's copy: a hook is copied with its module
            if not module.training:
                return
            calls["forward"] += 1
            if calls["forward"] == 5:  # during epoch 2 (3 or 4 steps an epoch)
                with torch.no_grad():
                    module.weight[0, 0, 0, 0] += 1e-3

        built.model.layer1[0].conv1.register_forward_hook(nudge)
        return built

    monkeypatch.setattr(shared_parts, "build_model", build_with_interference)
    trial = SearchTrial(SharedParts())
    config = head_only(demo_dir, tmp_path / "bad", resnet18_weights_file, epochs=3, feature_cache=False)
    with pytest.raises(FrozenTensorsChanged, match=r"during epoch 2: layer1[.]0[.]conv1[.]weight"):
        run_trial(config, trial)
    assert RunFolder(tmp_path / "bad").read_record()["integrity"]["changed"] == ["layer1.0.conv1.weight"]
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()  # the best epoch's records wait for a sound end


def test_the_reference_sees_a_single_bit_and_a_tensor_unlike_it_is_fingerprinted_as_before():
    parts = SharedParts()
    built = parts.build_model("resnet18", 3, "none", 32, 2, channels_last=True)
    model = built.model
    with torch.no_grad():
        model.bn1.running_mean.fill_(0.5)  # adapted before the run's first epoch: not the reference's values
    integrity = FreezeIntegrity(model, parts.frozen_reference(model))
    integrity.on_epoch_start(1, build_plan(PlanConfig(strategy="feature-extraction"), built.info).at_epoch(0))
    assert integrity.check(1).intact and integrity.check(1).checked == 120
    weight = model.layer1[0].conv1.weight
    with torch.no_grad():
        weight.view(torch.int32)[0, 0, 0, 0] ^= 1  # one bit of a tensor checked against the reference
    assert integrity.check(2).changed == ("layer1.0.conv1.weight",)
    with torch.no_grad():
        weight.view(torch.int32)[0, 0, 0, 0] ^= 1
        model.bn1.running_mean[0] = 0.25  # one the run fingerprinted itself
    assert integrity.check(3).changed == ("bn1.running_mean",)
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert same_bits(torch.tensor([float("nan")]), torch.tensor([float("nan")]))


def test_copies_are_the_build_bit_for_bit_with_the_random_state_it_left_in_an_ended_copys_memory():
    parts = SharedParts()
    torch.manual_seed(7)
    first = parts.build_model("resnet18", 3, "none", 32, 2, channels_last=True).model
    after_build = torch.get_rng_state()
    with torch.no_grad():  # the first trial trains its copy
        first.fc.weight.add_(1.0)
        first.layer1[0].bn1.running_var.mul_(2)
    torch.manual_seed(7)
    second = parts.build_model("resnet18", 3, "none", 32, 2, channels_last=True).model
    assert torch.equal(torch.get_rng_state(), after_build)  # the run goes on as if it had built the model
    template = parts._builds[next(iter(parts._builds))].built.model
    assert all(same_bits(a, b) for a, b in zip(second.state_dict().values(), template.state_dict().values()))
    assert second.fc.weight.data_ptr() == first.fc.weight.data_ptr()  # the ended copy's memory, refilled
    assert second.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert parts.frozen_reference(second) is parts.frozen_reference(first) is not None
    torch.manual_seed(8)  # another start: built anew, not a copy of the seed-7 build
    other = parts.build_model("resnet18", 3, "none", 32, 2, channels_last=True).model
    assert not same_bits(other.fc.weight, template.fc.weight)


@pytest.mark.parametrize("kept", [False, True])
def test_a_pruned_trial_whose_folder_is_deleted_writes_no_best_epoch_records(demo_dir, tmp_path,
                                                                               resnet18_weights_file, kept):
    trial = SearchTrial(SharedParts(), records_skipped_when=() if kept else (PRUNED,))
    pruner = PruneListener(lambda step, value: step == 50)  # epoch 2 of 4
    result = run_trial(head_only(demo_dir, tmp_path / "p", resnet18_weights_file, epochs=4), trial,
                       listeners=[pruner])
    folder = RunFolder(result.run_dir)
    assert result.stopped == PRUNED and result.epochs_run == 2
    assert folder.read_record()["status"] == "stopped" and len(folder.read_metrics()) == 2
    assert folder.checkpoint_path.exists() == folder.predictions_path.exists() == kept
    if kept:
        assert load_checkpoint(folder.checkpoint_path)["epoch"] == result.best_epoch <= 2


@pytest.mark.slow
def test_adabn_statistics_come_from_the_disk_cache_once_features_are_cached(demo_dir, tmp_path,
                                                                           resnet18_weights_file, monkeypatch):
    import engine.data.dataset as dataset
    import engine.training.setup as run_setup

    for setting in ("on", "auto"):
        first = fit(head_only(demo_dir, tmp_path / f"{setting}1", resnet18_weights_file, epochs=1, adapt_norm=setting))
        with monkeypatch.context() as patch:
            patch.setattr(run_setup, "adapt_batch_norm", lambda *a, **k: pytest.fail("AdaBN passed the trunk again"))
            patch.setattr(dataset.DecodedCache, "warm", lambda *a, **k: pytest.fail("images decoded again"))
            again = fit(head_only(demo_dir, tmp_path / f"{setting}2", resnet18_weights_file, epochs=1,
                                  adapt_norm=setting))
        choices = [RunFolder(r.run_dir).read_run().norm_choice for r in (first, again)]
        assert choices[0].adapted == choices[1].adapted and choices[0].why == choices[1].why
        assert choices[0].pinned_score == choices[1].pinned_score
        weights = [load_checkpoint(r.checkpoint)["model"] for r in (first, again)]
        assert all(same_bits(weights[0][k], weights[1][k]) for k in weights[0] if "running" in k)


def test_the_same_features_are_projected_once(monkeypatch):
    projected = []
    monkeypatch.setattr(embeddings, "_project", lambda x: projected.append(x) or x[:, :2])
    features = torch.randn(10, 5)
    first = embeddings.project_2d(features)
    assert embeddings.project_2d(features.clone()) is first and len(projected) == 1
    embeddings.project_2d(features + 1)
    assert len(projected) == 2


def test_a_head_only_search_measures_adapt_norm_once_and_its_best_flags_carry_the_choice(
        demo_dir, tmp_path, resnet18_weights_file, capfd):
    import json

    import optuna

    from engine.search import study as studies
    from engine.search.worker import NORM_ATTR
    from tests.helpers import cli

    storage = tmp_path / "runs" / "search.journal"
    rc, out, err = cli(capfd, "search", "--data", demo_dir, "--weights", resnet18_weights_file, "--image-size", "32",
                       "--batch-size", "16", "--device", "cpu", "--head-only", "--space", "epochs=1",
                       "--trials", "3", "--storage", storage, "--keep-runs", "--json")
    assert rc == 0, err
    study = optuna.load_study(study_name=studies.STUDY_NAME, storage=studies.open_storage(storage))
    first = RunFolder(tmp_path / "runs" / "trial-0000").read_run().norm_choice
    assert first.setting == "auto" and first.measured  # the first trial measured
    chosen = study.user_attrs[NORM_ATTR]
    assert chosen == ("on" if first.adapted else "off")
    for trial in study.trials[1:]:  # the later ones took its choice
        assert trial.user_attrs[NORM_ATTR] == chosen
        later = RunFolder(trial.user_attrs["run_dir"]).read_run().norm_choice
        assert later.setting == chosen and later.adapted == first.adapted and not later.measured
    best = json.loads(out.strip().splitlines()[-1])["best"]
    assert ("--adapt-norm" in best["flags"]) == (best["trial"] > 0)
    assert not (tmp_path / "runs" / "trial-0001" / "tensorboard").exists()  # search --tensorboard asks for it
