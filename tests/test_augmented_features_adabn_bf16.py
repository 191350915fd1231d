"""Speed, round 2: augmented views of cached trunk features, AdaBN, CPU bf16 autocast.

Tiny data (3 classes x 8 images of 32 px), random or file weights, CPU only.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision
from torch import nn

from app.cli import main
from app.cli_args import apply_flags, given_train_flags
from engine.model import adabn, devices
from engine.model.adabn import adapt_batch_norm, batch_norm_layers
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import Batch, Preprocessing, Sample, eval_transform, normalize_batch
from engine.data.demo import write_demo_dataset
from engine.errors import UserError
from engine.events import Callbacks, TrainingControl
from engine.model.features import compute_feature_views, feature_cache_key
from engine.training.feature_cache import feature_cache_decision
from engine.training.batches import AugmentedFeatureBatches, draw_views
from engine.data.images import decode_resized
from engine.model.architectures import build_model
from engine.plan.plan import _pin_eval, build_plan, is_pinned_eval
from engine.training.setup import set_up
from engine.model.devices import resolve_precision
from engine.training.trainer import fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("tiny") / "shapes", classes=3, per_class=8, size=32, seed=0)


def config(data, out, *, strategy="feature-extraction", augment="standard", weights="none", **train) -> RunConfig:
    train.setdefault("precision", "off")
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment=augment),
                     model=ModelConfig("resnet18", weights), plan=PlanConfig(strategy=strategy, base_lr=1e-2),
                     train=TrainConfig(epochs=train.pop("epochs", 2), batch_size=8, device="cpu", **train),
                     out_dir=str(out))


class Started(Callbacks):
    def __init__(self):
        self.events = []

    def on_run_started(self, event):
        self.events.append(event)


# --- augmented views ------------------------------------------------------------------------------


def test_feature_cache_key_changes_with_augmentation_views_and_adaptation(tiny_dir):
    samples = (Sample(str(next(tiny_dir.rglob("*.png"))), 0),)
    prep = Preprocessing(37, 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))

    def key(**extra):
        return feature_cache_key(samples, arch="resnet18", weights="none", seed=0, head="fc", prep=prep,
                                 precision="None", device_type="cpu", **extra)

    keys = [key(), key(augment="standard", views=6), key(augment="light", views=6), key(augment="standard", views=4),
            key(adapt_norm_batch=32), key(augment="standard", views=6, adapt_norm_batch=32)]
    assert len(set(keys)) == len(keys)
    assert key(augment="standard", views=6) == key(augment="standard", views=6)


def test_augmentation_caches_views_unless_views_is_zero():
    built = build_model("resnet18", 3, "none", 32)
    plan = build_plan(PlanConfig(strategy="feature-extraction"), built.info)
    on, note = feature_cache_decision(built.info, plan, "standard", True, views=6)
    assert on and note.startswith("trunk features of 6 augmented views per image, cached:")
    off, why = feature_cache_decision(built.info, plan, "standard", True, views=0)
    assert not off and "feature views is 0" in why
    plain, plain_note = feature_cache_decision(built.info, plan, "none", True, views=6)
    assert plain and plain_note.startswith("feature cache on")


def test_each_epoch_draws_one_view_per_image_and_validates_on_the_plain_view():
    count, n = 5, 40
    # Feature of view v of image i is (v, i): what a batch holds says which view of which image it is.
    views = torch.stack([torch.stack([torch.full((n,), float(v)), torch.arange(n, dtype=torch.float)], 1)
                         for v in range(count)])
    labels = torch.arange(n) % 3
    val = (torch.full((6, 2), -1.0), torch.zeros(6, dtype=torch.long))
    batches = AugmentedFeatureBatches(views, labels, val, batch_size=8, seed=3, device=CPU)
    drawn = {}
    for epoch in (1, 2):
        rows = torch.cat([torch.cat([x, y[:, None].float()], 1) for x, y in batches.train_batches(epoch)])
        images = rows[:, 1].long()
        assert sorted(images.tolist()) == list(range(n))  # every image once per epoch
        assert torch.equal(rows[:, 2].long(), labels[images])  # with its own label
        drawn[epoch] = rows[images.argsort(), 0]
        assert len(set(drawn[epoch].tolist())) > 1  # views are mixed within an epoch
    assert not torch.equal(drawn[1], drawn[2])  # and differ between epochs
    assert torch.equal(draw_views(views, 3, 2)[:, 0], drawn[2])  # a function of (seed, epoch): resume-safe
    assert batches.steps_per_epoch == n // 8
    assert all(torch.equal(x, val[0]) for x, _ in batches.val_batches())


@pytest.mark.slow
def test_a_run_caches_augmented_views_and_plain_validation_features(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path / "views", feature_views=3)
    run = set_up(cfg, None, Callbacks(), TrainingControl(), fresh=True)
    assert isinstance(run.batches, AugmentedFeatureBatches)
    assert run.feature_note.startswith("trunk features of 3 augmented views per image, cached")
    views = run.batches.views
    assert views.shape == (3, len(run.scan.train), 512)
    assert not torch.equal(views[0], views[1])  # augmentation made them differ

    def plain_features(samples):
        images = torch.stack([eval_transform(run.prep.crop)(decode_resized(s.path, run.prep.resize)) for s in samples])
        trunk = nn.Sequential(*list(run.model.children())[:-1]).eval()
        with torch.no_grad():
            return trunk(normalize_batch(images, run.prep)).flatten(1)

    assert torch.allclose(run.batches.val[0], plain_features(run.scan.val), atol=1e-4)
    assert not torch.allclose(views[0], plain_features(run.scan.train), atol=1e-4)

    recorder = Started()
    result = fit(replace_out(cfg, tmp_path / "fit"), recorder)
    assert result.epochs_run == 2 and result.checkpoint
    assert recorder.events[0].feature_cache.startswith("trunk features of 3 augmented views per image, cached")


def replace_out(cfg: RunConfig, out) -> RunConfig:
    return RunConfig(data=cfg.data, model=cfg.model, plan=cfg.plan, train=cfg.train, out_dir=str(out))


def test_views_beyond_the_memory_budget_are_reduced_and_said():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4))  # head "1": the trunk is the Flatten
    loader = [Batch(torch.randint(0, 255, (5, 3, 4, 4), dtype=torch.uint8), torch.arange(5) % 2, [])]
    prep = Preprocessing(4, 4, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    per_view = 5 * 48 * 4
    stacked, labels, note = compute_feature_views(
        6, 0, lambda seed: loader, budget_bytes=2 * per_view + 1, model=model, head="1", prep=prep, device=CPU,
        autocast=contextlib.nullcontext, channels_last=False)
    assert stacked.shape == (2, 5, 48) and torch.equal(labels, torch.arange(5) % 2)
    assert note.startswith("2 of 6 views kept")


# --- CPU bf16 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_uses_cpu_bf16_only_where_native_and_fp32_switches_it_off(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else None)
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("off", CPU) is None


def test_native_bf16_detection_needs_onednn_and_a_bf16_instruction_set(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": True})
    assert devices.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": False})
    assert not devices.cpu_has_native_bf16()  # AVX-512 alone: oneDNN would emulate bf16
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not devices.cpu_has_native_bf16()


@pytest.mark.slow
def test_a_checkpoint_trained_under_cpu_bf16_is_fp32_and_loads_into_torchvision(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    recorder = Started()
    result = fit(config(tiny_dir, tmp_path / "bf16", strategy="fine-tune", augment="none", precision="auto",
                        epochs=1), recorder)
    assert recorder.events[0].precision == "bfloat16"
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    plain = torchvision.models.resnet18(num_classes=3)
    plain.load_state_dict(state)


# --- AdaBN ---------------------------------------------------------------------------------------


def test_adabn_takes_a_subset_spread_over_the_file_order(monkeypatch):
    monkeypatch.setattr(adabn, "MAX_IMAGES", 4)
    assert adabn.evenly_spaced(3) == [0, 1, 2]  # fewer than the limit: all of them
    assert adabn.evenly_spaced(40) == [0, 10, 20, 30]  # four classes of ten in file order: one image of each


def test_adapt_batch_norm_changes_only_running_statistics_and_leaves_modes_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    _pin_eval(model[2])  # as the plan pins a frozen norm layer
    model[0].momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    images = torch.randint(0, 255, (12, 3, 8, 8), dtype=torch.uint8)
    loader = [Batch(images[i:i + 4], torch.zeros(4, dtype=torch.long), []) for i in range(0, 12, 4)]
    loader.append(Batch(images[:1], torch.zeros(1, dtype=torch.long), []))  # a batch of one is left out
    prep = Preprocessing(8, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert adapt_batch_norm(model, loader, prep, CPU, channels_last=False) == 12
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{i}.{b}" for i in (0, 2) for b in ("running_mean", "running_var", "num_batches_tracked")}
    expected_mean = normalize_batch(images, prep).mean((0, 2, 3))  # equal batches: the mean of batch means
    assert torch.allclose(model[0].running_mean, expected_mean, atol=1e-5)
    assert [m.training for m in model.modules()] == modes
    assert model[0].momentum == 0.3 and is_pinned_eval(model[2])
    assert len(batch_norm_layers(model)) == 2


def bn_statistics(state: dict) -> set[str]:
    return {k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.slow
@pytest.mark.parametrize("adapt", [False, True])
def test_adabn_on_changes_only_bn_statistics_off_changes_none_and_both_keep_integrity(tiny_dir, tmp_path,
                                                                                      resnet18_weights_file, adapt,
                                                                                      monkeypatch):
    assert TrainConfig().adapt_norm == "auto"  # measured: tests/test_adapt_norm_auto.py
    monkeypatch.setattr(adabn, "MAX_IMAGES", 6)  # AdaBN averages over a subset of the training images
    recorder = Started()
    cfg = config(tiny_dir, tmp_path / str(adapt), augment="none", weights=str(resnet18_weights_file),
                 adapt_norm="on" if adapt else "off")
    result = fit(cfg, recorder)
    assert result.integrity is not None and result.integrity.intact and result.integrity.checked > 0
    source = torch.load(resnet18_weights_file, weights_only=True)
    saved = torch.load(result.checkpoint, weights_only=True)["model"]
    changed = {k for k in source if not k.startswith("fc.") and not torch.equal(source[k], saved[k])}
    notes = " ".join(recorder.events[0].notes)
    if adapt:
        assert changed == bn_statistics(source) - {k for k in source if k.startswith("fc.")}
        assert "AdaBN: 20 BatchNorm layers, 6 images" in notes
    else:
        assert changed == set() and "AdaBN" not in notes and "not adapted (as loaded) (setting off)" in notes


@pytest.mark.slow
def test_adapted_statistics_give_the_features_cache_its_own_entry(tiny_dir, tmp_path, resnet18_weights_file,
                                                                   monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))  # nothing cached by other tests
    notes = []
    for name, adapt in (("plain", "off"), ("adapted", "on"), ("again", "on")):
        recorder = Started()
        fit(config(tiny_dir, tmp_path / name, augment="none", weights=str(resnet18_weights_file), epochs=1,
                   adapt_norm=adapt), recorder)
        notes.append(recorder.events[0].feature_cache)
    assert ["disk cache" in n for n in notes] == [False, False, True]


# --- settings ------------------------------------------------------------------------------------


def test_cli_flags_and_project_values_for_views_and_adabn(capsys):
    given = given_train_flags(["train", "--feature-views", "2", "--adapt-norm", "--precision", "fp32"])
    cfg = apply_flags(RunConfig(), given)
    assert (cfg.train.feature_views, cfg.train.adapt_norm, cfg.train.precision) == (2, "on", "fp32")
    assert apply_flags(RunConfig(), given_train_flags(["train"])).train.adapt_norm == "auto"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--feature-views", "65"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["transfer-studio train: error: argument --feature-views: feature views must be in [0, 64], got 65"]
    raw = RunConfig().to_dict()
    raw["train"]["feature_views"] = -1
    with pytest.raises(UserError, match="feature views must be in"):
        RunConfig.from_dict(raw).validate()


def test_training_panel_shows_and_reports_feature_views_and_adabn(qtbot):
    from PySide6.QtCore import Qt

    from widgets.training_panel import TrainingPanel

    panel = TrainingPanel([("CPU", "cpu", 1)])
    qtbot.addWidget(panel)
    edits = []
    panel.train_edited.connect(edits.append)
    panel.show_train(TrainConfig(feature_views=3, adapt_norm="on"))
    assert edits == []  # showing settings is not an edit
    combo = panel.adapt_norm_combo
    assert panel.feature_views_spin.value() == 3 and combo.currentData() == "on"
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "on", "off"]
    assert panel.feature_views_spin.toolTip() and combo.toolTip()
    assert all(combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(combo.count()))
    panel.feature_views_spin.setValue(4)
    combo.setCurrentIndex(combo.findData("off"))
    assert edits == [{"feature_views": 4}, {"adapt_norm": "off"}]
    panel.set_run_controls(running=True, can_export=False)
    assert not panel.feature_views_spin.isEnabled() and not combo.isEnabled()
