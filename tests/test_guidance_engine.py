"""Guidance: the strategy advisor, the LR range test over a whole plan, the schedule preview, and
class weights. Tiny generated data on CPU; weights none or a state dict file, never a download."""

from __future__ import annotations

import argparse
import copy
import json
import random

import numpy as np
import pytest
import torch

from app.cli import main
from app.cli_args import given_train_flags, train_config_from_args
from engine.insight.advisor import advise, far_domain, knn_accuracy, linear_probe
from engine.training.class_weights import decide_class_weights, training_criterion
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import DatasetScan, Sample, scan_dataset
from engine.data.demo import write_demo_dataset
from engine.errors import UserError
from engine.insight.lr_finder import multipliers, range_test, scale_plan, valley_index
from engine.model.architectures import build_model
from engine.plan.optimization import Optimization, ScheduleSegment, schedule_preview
from engine.plan.plan import apply_plan, build_plan
from engine.training.trainer import fit


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """3 classes x 8 images of 32 px."""
    return write_demo_dataset(tmp_path_factory.mktemp("tiny") / "shapes", classes=3, per_class=8, size=32, seed=1)


def fake_scan(per_class: list[int]) -> DatasetScan:
    """A scan of `per_class` images per class, without files: the advisor's table reads only counts."""
    train, val = [], []
    for label, n in enumerate(per_class):
        samples = [Sample(f"/nowhere/c{label}/{i}.png", label) for i in range(n)]
        n_val = max(1, n // 5)
        val += samples[:n_val]
        train += samples[n_val:]
    return DatasetScan("/nowhere", "folders", tuple(f"c{i}" for i in range(len(per_class))), tuple(train), tuple(val),
                       (), {"width": {"min": 224, "median": 256, "max": 300},
                            "height": {"min": 224, "median": 256, "max": 300}})


def plan_from_train_flags(tmp_path, advice, arch: str, weights: str, data: str = "/nowhere"):
    """The plan `transfer-studio train` builds from the advised flags, by train's own code."""
    argv = ["train", "--data", data, "--model", arch, "--weights", weights, *advice.flags]
    config = train_config_from_args(argparse.Namespace(resume=None, project=None, out=str(tmp_path / "run")),
                                    given_train_flags(argv))
    config.validate()
    return config


# --- the advisor's table -------------------------------------------------------------------------


def test_demo_with_imagenet_style_weights_gets_feature_extraction_and_its_flags_reproduce_it(
        tmp_path, resnet18_weights_file):
    root = write_demo_dataset(tmp_path / "demo", classes=4, per_class=60, size=16, seed=0)  # the window's demo
    scan = scan_dataset(root)
    advice = advise(scan, "resnet18", str(resnet18_weights_file), measure=False)
    assert scan.total == 240 and advice.strategy == "feature-extraction"
    assert advice.figures["images"] == 240 and advice.figures["smallest_class"]["images"] == 60
    assert any("240 images" in r for r in advice.reasons)
    config = plan_from_train_flags(tmp_path, advice, "resnet18", str(resnet18_weights_file), str(root))
    info = build_model("resnet18", 4, "none").info
    assert config.plan == advice.plan
    assert build_plan(config.plan, info) == build_plan(advice.plan, info)
    assert config.data.augment == "none"  # the flags also switch the feature cache on
    assert json.loads(json.dumps(advice.to_dict()))["flags"] == list(advice.flags)


@pytest.mark.parametrize("images, strategy", [(120, "feature-extraction"), (499, "feature-extraction"),
                                              (500, "gradual"), (2400, "gradual"), (5000, "gradual"),
                                              (5001, "discriminative"), (24000, "discriminative")])
def test_table_by_image_count_and_flags_give_the_same_plan(tmp_path, images, strategy):
    scan = fake_scan([images // 4 + (1 if i < images % 4 else 0) for i in range(4)])
    assert scan.total == images
    advice = advise(scan, "resnet18", "imagenet", measure=False)
    assert advice.strategy == strategy
    info = build_model("resnet18", 4, "none").info
    config = plan_from_train_flags(tmp_path, advice, "resnet18", "imagenet")
    plan = build_plan(advice.plan, info)
    assert build_plan(config.plan, info) == plan
    if strategy == "discriminative":  # fine-tuning: everything trains from the first epoch
        assert not plan.unfreeze_at and not any(plan.effective(m).frozen for _, m, _ in info.parameter_modules)
    if strategy == "gradual":  # every stage has thawed, and trained, before the advised epochs end
        assert config.train.epochs > max(plan.unfreeze_at.values()) + 1


@pytest.mark.parametrize("images", [24, 240, 2400, 24000])
def test_random_weights_never_get_feature_extraction(tmp_path, images):
    advice = advise(fake_scan([images // 2, images // 2]), "resnet18", "none", measure=False)
    info = build_model("resnet18", 2, "none").info
    plan = build_plan(advice.plan, info)
    assert advice.strategy != "feature-extraction" and not plan.unfreeze_at
    assert not any(plan.effective(m).frozen for _, m, _ in info.parameter_modules)
    assert build_plan(plan_from_train_flags(tmp_path, advice, "resnet18", "none").plan, info) == plan


def test_imbalance_and_small_images_are_explained():
    scan = fake_scan([300, 40])
    scan = DatasetScan(scan.root, scan.layout, scan.class_names, scan.train, scan.val, (),
                       {"width": {"min": 32, "median": 40, "max": 64}, "height": {"min": 32, "median": 40, "max": 64}})
    reasons = " ".join(advise(scan, "resnet18", "imagenet", measure=False).reasons)
    assert "7.5x" in reasons and "--class-weights auto" in reasons and "40x40 px" in reasons


# --- the measured pass ---------------------------------------------------------------------------


def test_probe_and_knn_separate_clean_clusters_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 4
    labels = torch.arange(60) % 3
    feats = centres[labels] + torch.randn(60, 16, generator=gen) * 0.3
    assert linear_probe(feats[:45], labels[:45], feats[45:], labels[45:], 3) == 1.0
    assert knn_accuracy(feats[:45], labels[:45], feats[45:], labels[45:], 3) == 1.0
    shuffled = labels[torch.randperm(60, generator=gen)]
    assert linear_probe(feats[:45], shuffled[:45], feats[45:], shuffled[45:], 3) < 0.8


def test_far_domain_rule_and_its_threshold():
    def backbone(last, earlier):
        return {"linear_probe": last, "knn": last, "stage_probes": [{"stage": f"s{i}", "accuracy": a}
                                                                    for i, a in enumerate([*earlier, last])]}
    assert far_domain(backbone(0.70, [0.40, 0.69]), "imagenet")[0]  # an earlier stage within 2 points
    assert not far_domain(backbone(0.70, [0.40, 0.60]), "imagenet")[0]
    assert not far_domain(backbone(0.99, [0.99, 0.99]), "imagenet")[0]  # easy data, nothing to gain
    assert not far_domain(backbone(0.70, [0.70]), "none")[0]
    assert far_domain(backbone(0.70, [0.40, 0.69]), "imagenet")[1].count("2%") == 1


def test_far_domain_with_enough_images_advises_fine_tuning_from_the_early_layers(tmp_path):
    from engine.insight.advisor import choose

    info = build_model("resnet18", 4, "none").info
    strategy, flags, plan, _ = choose(2400, "imagenet", True, info)
    assert strategy == "fine-tune" and build_plan(plan, info).effective("conv1").frozen is False
    assert choose(200, "imagenet", True, info)[0] == "feature-extraction"  # too few images to train the trunk


def test_measured_advice_on_images(tiny_dir, resnet18_weights_file):
    advice = advise(scan_dataset(tiny_dir), "resnet18", str(resnet18_weights_file), image_size=32)
    backbone = advice.figures["backbone"]
    assert backbone["held_out_images"] == 6 and backbone["train_images"] == 18
    assert [s["stage"] for s in backbone["stage_probes"]] == ["bn1", "layer1", "layer2", "layer3", "layer4"]
    assert all(0 <= s["accuracy"] <= 1 for s in backbone["stage_probes"]) and 0 <= backbone["knn"] <= 1
    assert any("Linear probe" in r for r in advice.reasons) and advice.strategy == "feature-extraction"
    json.dumps(advice.to_dict())  # plain data


# --- the LR range test ---------------------------------------------------------------------------


def _state(module, optimizer, scaler) -> dict:
    return {"model": {k: v.clone() for k, v in module.state_dict().items()},
            "grads": {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()},
            "modes": {n: m.training for n, m in module.named_modules()},
            "optimizer": copy.deepcopy(optimizer.state_dict()), "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}


def _bitwise_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_bitwise_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def tiny_cnn():
    """A CNN with a stem, two stages, BatchNorm and a Linear head: four LR groups, milliseconds a step."""
    from engine.model.architectures import describe

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    return model, describe(model, "tiny", 3, 16)


def test_range_test_keeps_group_ratios_and_restores_everything_bitwise():
    torch.manual_seed(0)
    model, info = tiny_cnn()
    train = TrainConfig(epochs=2, batch_size=8)
    plan = build_plan(PlanConfig("discriminative", 1e-3), info)
    apply_plan(model, plan)
    optimization = Optimization(model, info, plan, train, ScheduleSegment.planned(train, 3))
    optimizer = optimization.optimizer
    x, y = torch.randn(24, 3, 16, 16), torch.arange(24) % 3
    batches = lambda epoch: iter([(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)])  # noqa: E731
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    optimization.set_lrs(1)  # mid-schedule: the sweep must start from the planned LRs, not these
    loss = criterion(model(torch.randn(8, 3, 16, 16)), y[:8])  # not a batch of the sweep
    loss.backward()
    optimizer.step()  # the optimizer holds state (moments, step counts) and the grads are set
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    planned = {g["group_label"]: g["initial_lr"] for g in optimizer.param_groups}
    assert len(planned) == 4  # three stage groups below the head, and the head
    random.random(), np.random.rand()  # noqa: B018 - any state at all
    before = _state(model, optimizer, scaler)
    result = range_test(model, optimizer, batches, criterion, plan.base_lr, steps=25, start=1e-3, end=1e3,
                        scaler=scaler)
    after = _state(model, optimizer, scaler)
    for key in before:
        assert _bitwise_equal(before[key], after[key]), key
    assert len(result.curve) >= 3, [(p.multiplier, p.raw_loss) for p in result.curve]
    for point in result.curve:  # every group at its planned LR times the same multiplier, exactly
        assert point.lrs == {label: lr * point.multiplier for label, lr in planned.items()}
    swept = [p.multiplier for p in result.curve]
    assert result.suggestion.rule == "valley" and result.suggestion.multiplier in swept
    assert swept[0] <= result.suggestion.multiplier <= swept[-1]
    assert all(swept[0] <= s.multiplier <= swept[-1] for s in result.alternatives)
    assert result.suggestion.base_lr == pytest.approx(1e-3 * result.suggestion.multiplier)


def test_range_test_stops_when_asked_and_on_divergence():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.arange(16) % 2
    calls = []
    result = range_test(model, optimizer, lambda e: iter([(x, y)]), torch.nn.CrossEntropyLoss(), 0.1, steps=50,
                        should_stop=lambda: len(calls) >= 5 or calls.append(1) is not None and False)
    assert result.stopped == "user" and len(result.curve) == 5
    result = range_test(model, optimizer, lambda e: iter([(x, y)]), torch.nn.CrossEntropyLoss(), 1.0, steps=60,
                        start=1e-2, end=1e6)
    assert result.stopped == "diverged" and len(result.curve) < 60
    with pytest.raises(UserError):
        multipliers(10, 1, 100)


def test_valley_picks_two_thirds_into_the_longest_decrease():
    losses = [2.0] * 10 + [2.0 - 0.05 * i for i in range(1, 31)] + [0.5 + 0.2 * i for i in range(10)]
    # the longest decrease runs from index 9 (the last 2.0) to 39; 2/3 of the way is 29
    assert valley_index(losses) == 9 + (2 * 30) // 3


def test_scale_plan_keeps_ratios():
    from engine.config import PlanEdit

    config = PlanConfig("discriminative", 1e-3, edits=(PlanEdit("fc", lr=2e-3), PlanEdit("layer1", frozen=True)))
    scaled = scale_plan(config, 10.0)
    assert scaled.base_lr == 1e-3 * 10.0 and scaled.edits[0].lr == 2e-3 * 10.0 and scaled.edits[1] == config.edits[1]


def test_lr_find_cli_on_cached_features(tiny_dir, capsys):
    rng = torch.get_rng_state()
    code = main(["lr-find", "--data", str(tiny_dir), "--model", "resnet18", "--weights", "none", "--image-size", "32",
                 "--strategy", "feature-extraction", "--augment", "none", "--batch-size", "8", "--device", "cpu",
                 "--steps", "30", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and torch.equal(rng, torch.get_rng_state())
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report) >= {"curve", "suggestion", "alternatives"}
    assert list(report["curve"][0])[:3] == ["multiplier", "lrs", "loss"] and list(report["curve"][0]["lrs"]) == ["base"]
    swept = [p["multiplier"] for p in report["curve"]]
    assert swept[0] <= report["suggestion"]["multiplier"] <= swept[-1] and report["suggestion"]["rule"] == "valley"
    assert {a["rule"] for a in report["alternatives"]} == {"steepest", "minimum/10"}


def test_guidance_commands_refuse_bad_input_in_one_line(tmp_path, capsys):
    def exit_code(argv) -> int:
        try:
            return main(argv)
        except SystemExit as exc:  # argparse's usage errors
            return exc.code

    for argv in (["advise", "--data", str(tmp_path / "missing")],
                 ["lr-find", "--data", str(tmp_path), "--start", "10", "--end", "1"],
                 ["lr-find", "--steps", "2"],
                 ["layers", "--classes", "3", "--weights", "none", "--preview"]):
        assert exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err


# --- the schedule before it runs -------------------------------------------------------------------


@pytest.mark.slow
def test_schedule_preview_equals_the_logged_lrs_of_a_gradual_warmed_up_cosine_run(tiny_dir, tmp_path, capsys):
    config = RunConfig(data=DataConfig(root=str(tiny_dir), image_size=32, augment="none", decoded_cache_mb=16),
                       model=ModelConfig("resnet18", "none"), plan=PlanConfig("gradual", 1e-3),
                       train=TrainConfig(epochs=4, batch_size=8, schedule="cosine", warmup_epochs=1.5, device="cpu",
                                         telemetry=False, precision="off"),
                       out_dir=str(tmp_path / "run"))
    fit(config)
    logged = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = -(-len(scan_dataset(tiny_dir).train) // 8)
    built = build_model("resnet18", 3, "none", image_size=32)
    preview = schedule_preview(built.model, built.info, build_plan(config.plan, built.info), config.train, steps)
    assert [e["lrs"] for e in preview] == logged
    assert len({len(lrs) for lrs in logged}) == 4  # a group joins every epoch: the preview names them alike
    assert preview[0]["trainable"] == ["fc"] and preview[1]["trainable"] == ["layer4", "fc"]
    code = main(["layers", "--model", "resnet18", "--weights", "none", "--classes", "3", "--strategy", "gradual",
                 "--epochs", "4", "--schedule", "cosine", "--warmup-epochs", "1.5", "--preview", "--data",
                 str(tiny_dir), "--batch-size", "8", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["steps_per_epoch"] == steps
    assert [e["lrs"] for e in report["schedule"]] == logged and [e["epoch"] for e in report["schedule"]] == [1, 2, 3, 4]


# --- class weights ---------------------------------------------------------------------------------


def test_auto_class_weights_switch_on_for_imbalance_and_off_for_balance(tmp_path):
    balanced = scan_dataset(write_demo_dataset(tmp_path / "b", classes=3, per_class=9, size=16, seed=0))
    root = write_demo_dataset(tmp_path / "i", classes=3, per_class=9, size=16, seed=0)
    for path in sorted((root / "circle").iterdir())[3:]:
        path.unlink()  # circle 3, the others 9: 3x
    imbalanced = scan_dataset(root)
    on = decide_class_weights("auto", imbalanced)
    assert on.on and on.imbalance == 3.0 and "3.0x" in on.note
    counts = [c["train"] for c in imbalanced.class_counts()]
    n = sum(counts)
    assert on.weights == tuple(n / (3 * c) for c in counts) and on.weights[0] > on.weights[1]
    off = decide_class_weights("auto", balanced)
    assert not off.on and "off" in off.note
    assert decide_class_weights("balanced", balanced).on and not decide_class_weights("none", imbalanced).on
    criterion = training_criterion("auto", imbalanced, 0.0)
    assert torch.equal(criterion.weight, torch.tensor(on.weights, dtype=torch.float32))
    assert training_criterion("auto", balanced, 0.0).weight is None


def test_class_weights_setting_is_validated_and_reaches_train(tmp_path):
    with pytest.raises(UserError, match="class weights must be one of auto, none, balanced"):
        RunConfig(train=TrainConfig(class_weights="sometimes")).validate()
    config = train_config_from_args(argparse.Namespace(resume=None, project=None, out=str(tmp_path / "r")),
                                    given_train_flags(["train", "--data", "x", "--class-weights", "balanced"]))
    assert config.train.class_weights == "balanced"
    assert RunConfig.from_dict(config.to_dict()).train.class_weights == "balanced"


def test_sweeping_one_module_keeps_the_others_at_their_planned_lr(tiny_dir, capsys):
    code = main(["lr-find", "--data", str(tiny_dir), "--model", "resnet18", "--weights", "none", "--image-size", "32",
                 "--strategy", "discriminative", "--augment", "none", "--batch-size", "8", "--device", "cpu",
                 "--steps", "6", "--module", "layer4", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["module"] == "layer4"
    first, last = report["curve"][0]["lrs"], report["curve"][-1]["lrs"]
    assert {k: v for k, v in first.items() if k != "layer4"} == {k: v for k, v in last.items() if k != "layer4"}
    assert last["layer4"] == first["layer4"] / report["curve"][0]["multiplier"] * report["curve"][-1]["multiplier"]
    assert report["suggestion"]["base_lr"] == pytest.approx(1e-3 / 2.6 * report["suggestion"]["multiplier"])


def test_advice_from_features_already_at_hand_reads_no_image():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(40) % 2
    feats = torch.randn(2, 8, generator=gen)[labels] * 3 + torch.randn(40, 8, generator=gen) * 0.2
    scan = fake_scan([20, 20])  # its files do not exist: any read would fail
    advice = advise(scan, "resnet18", "imagenet", features=((feats[:30], labels[:30]), (feats[30:], labels[30:])))
    backbone = advice.figures["backbone"]
    assert backbone["linear_probe"] == 1.0 and backbone["knn"] == 1.0 and backbone["stage_probes"] == []
    assert advice.strategy == "feature-extraction"
