"""The freeze/LR plan: inheritance, subtree edits, presets, param groups, frozen norm layers."""

import pytest
import torch

from app.cli_args import apply_flags, given_train_flags
from engine.config import HEAD_ONLY_BASE_LR, PlanConfig, PlanEdit, RunConfig
from engine.errors import UserError
from engine.model.architectures import build_model
from engine.plan.plan import (apply_plan, audit_optimizer, build_plan, describe_plan, group_specs,
                         is_pinned_eval, param_groups, summary_line, with_base_lr, with_weight_decay)

REFERENCE_RECIPE = (("conv1", 1e-5), ("layer1", 1e-5), ("layer2", 5e-5), ("layer3", 1e-4),
                    ("layer4", 5e-4), ("fc", 1e-3))


@pytest.fixture(scope="module")
def resnet18():
    return build_model("resnet18", 10, "none")


def test_a_head_trained_alone_starts_from_a_larger_lr():
    assert HEAD_ONLY_BASE_LR > PlanConfig.base_lr
    head_only = PlanConfig().with_strategy("feature-extraction")
    assert head_only.base_lr == HEAD_ONLY_BASE_LR
    assert head_only.with_strategy("discriminative").base_lr == PlanConfig.base_lr
    assert PlanConfig(base_lr=3e-4).with_strategy("feature-extraction").base_lr == 3e-4  # the person's own stays

    def plan(*flags: str, base: RunConfig = RunConfig()) -> PlanConfig:
        return apply_flags(base, given_train_flags(["train", *flags])).plan

    assert plan("--strategy", "feature-extraction").base_lr == HEAD_ONLY_BASE_LR
    assert plan("--strategy", "feature-extraction", "--base-lr", "0.001").base_lr == 1e-3
    assert plan().base_lr == PlanConfig.base_lr  # the default strategy, fine-tune
    project = RunConfig(plan=PlanConfig(strategy="fine-tune", base_lr=2e-4))
    assert plan("--strategy", "feature-extraction", base=project).base_lr == 2e-4  # the project's LR is the person's


def test_feature_extraction_trains_only_the_head(resnet18):
    plan = build_plan(PlanConfig(strategy="feature-extraction"), resnet18.info)
    report = describe_plan(resnet18.info, plan)
    assert (report["trainable_params"], report["total_params"]) == (5130, 11_181_642)
    assert [p["name"] for p in report["parameters"] if p["trainable"]] == ["fc.weight", "fc.bias"]


def test_reference_recipe_lrs_groups_and_bn1_at_base_lr(resnet18):
    edits = tuple(PlanEdit(m, lr=lr) for m, lr in REFERENCE_RECIPE)
    plan = build_plan(PlanConfig(strategy="fine-tune", base_lr=3e-4, edits=edits), resnet18.info)
    report = describe_plan(resnet18.info, plan, weight_decay=0.01)
    lr_of = {p["name"]: p["lr"] for p in report["parameters"]}
    for module, lr in REFERENCE_RECIPE:
        under = [n for n in lr_of if n.startswith(module + ".")]
        assert under and all(lr_of[n] == lr for n in under)
    assert lr_of["bn1.weight"] == lr_of["bn1.bias"] == 3e-4
    groups = report["param_groups"]
    assert sorted(g["lr"] for g in groups) == sorted({1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 3e-4})
    names = [n for g in groups for n in g["params"]]
    assert len(names) == len(set(names)) == len(lr_of)


def test_subtree_edits_cascade_and_inheritance(resnet18):
    config = PlanConfig(strategy="fine-tune", edits=(
        PlanEdit("layer1.0", frozen=True), PlanEdit("layer1", frozen=False),  # parent overrides child
        PlanEdit("layer2", frozen=True), PlanEdit("layer2.1.bn2", frozen=False),
        PlanEdit("layer3", lr=1e-4), PlanEdit("layer3.0.conv1", lr=7e-5), PlanEdit("layer3", lr=2e-4),
    ))
    plan = build_plan(config, resnet18.info)
    assert not plan.effective("layer1.0.conv1").frozen
    assert plan.effective("layer2.0.conv1").frozen and not plan.effective("layer2.1.bn2").frozen
    assert plan.effective("layer3.0.conv1").lr == 2e-4
    assert plan.effective("layer3.0.conv1").lr_from == "layer3"


def test_bad_edits_are_refused(resnet18):
    with pytest.raises(UserError, match="no module named 'layer9'"):
        build_plan(PlanConfig(edits=(PlanEdit("layer9", frozen=True),)), resnet18.info)
    with pytest.raises(UserError, match="must be > 0"):
        build_plan(PlanConfig(edits=(PlanEdit("fc", lr=0.0),)), resnet18.info)
    with pytest.raises(UserError, match="finite"):
        build_plan(PlanConfig(edits=(PlanEdit("fc", lr=float("inf")),)), resnet18.info)


def test_the_roots_lr_is_the_base_lr_and_keeps_lrs_set_below(resnet18):
    config = PlanConfig(strategy="fine-tune", edits=(PlanEdit("layer3", lr=2e-4), PlanEdit("", lr=5e-4)))
    plan = build_plan(config, resnet18.info)
    assert plan.base_lr == 5e-4 and plan.effective("layer3.0.conv1").lr == 2e-4  # not cleared
    assert plan.effective("layer1.0.conv1").lr == 5e-4
    folded = with_base_lr(config, 7e-4)
    assert folded.base_lr == 7e-4 and folded.edits == (PlanEdit("layer3", lr=2e-4),)
    assert build_plan(folded, resnet18.info).effective("layer3.0.conv1").lr == 2e-4
    mixed = with_base_lr(PlanConfig(edits=(PlanEdit("", lr=1e-2, frozen=True),)), 1e-3)
    assert mixed.edits == (PlanEdit("", frozen=True),)  # the root's other settings stay


def test_weight_decay_changes_only_the_param_groups(resnet18):
    report = describe_plan(resnet18.info, build_plan(PlanConfig(strategy="discriminative"), resnet18.info), 0.01)
    changed = with_weight_decay(report, 0.05)
    assert {g["weight_decay"] for g in changed["param_groups"]} == {0.05}
    assert {k: v for k, v in changed.items() if k != "param_groups"} == {k: v for k, v in report.items() if k != "param_groups"}
    assert report["param_groups"][0]["weight_decay"] == 0.01  # the original is untouched


def test_frozen_norm_layers_stay_in_eval_mode_through_train(resnet18):
    model = build_model("resnet18", 10, "none").model
    plan = build_plan(PlanConfig(strategy="feature-extraction", edits=(PlanEdit("layer4", train_norm=True),)),
                      resnet18.info)
    apply_plan(model, plan)
    model.train()
    assert not model.bn1.training and is_pinned_eval(model.bn1)
    assert model.layer4[0].bn1.training  # the override lets these update their statistics
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before)
    apply_plan(model, build_plan(PlanConfig(strategy="fine-tune"), resnet18.info))
    model.train()
    assert model.bn1.training and not is_pinned_eval(model.bn1)


def test_param_groups_hold_each_trainable_parameter_once(resnet18):
    model = build_model("resnet18", 10, "none").model
    plan = build_plan(PlanConfig(strategy="discriminative", discriminative_factor=2.0), resnet18.info)
    apply_plan(model, plan)
    optimizer = torch.optim.AdamW(param_groups(model, group_specs(resnet18.info, plan, 0.01)))
    assert audit_optimizer(model, optimizer) == {"orphaned": [], "frozen_in_optimizer": [], "duplicated": []}
    lrs = {s: plan.effective(s).lr for s in resnet18.info.stages}
    assert lrs["fc"] == 1e-3 and lrs["layer4"] == 5e-4 and lrs["layer1"] == pytest.approx(1e-3 / 16)
    assert lrs["conv1"] == lrs["bn1"] == pytest.approx(1e-3 / 32)  # the stem is one step of the ramp
    assert resnet18.info.stage_groups[0] == ("conv1", "bn1")


def test_gradual_unfreezes_one_stage_per_interval_from_the_top(resnet18):
    plan = build_plan(PlanConfig(strategy="gradual", gradual_every=2), resnet18.info)
    trainable = lambda p: sorted(s for s in resnet18.info.stages if not p.effective(s).frozen)  # noqa: E731
    assert trainable(plan.at_epoch(0)) == trainable(plan.at_epoch(1)) == ["fc"]
    assert trainable(plan.at_epoch(2)) == ["fc", "layer4"]
    assert trainable(plan.at_epoch(4)) == ["fc", "layer3", "layer4"]
    assert plan.effective("layer3.0.conv1").unfreeze_epoch == 4
    assert all(not plan.at_epoch(99).effective(s).frozen for s in resnet18.info.stages)


def test_stages_of_other_families():
    eff = build_model("efficientnet_b0", 3, "none").info
    assert eff.stages[0] == "features.0" and eff.stages[-1] == "classifier.1"
    vit = build_model("vit_b_16", 3, "none").info
    assert "encoder.layers.encoder_layer_11" in vit.stages and vit.stages[-1] == "heads.head"


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny",
                                  "regnet_y_400mf", "vit_b_16"])
def test_gradual_ends_with_every_parameter_training(arch):
    info = build_model(arch, 3, "none").info
    plan = build_plan(PlanConfig(strategy="gradual"), info)
    first = describe_plan(info, plan.at_epoch(0))
    head_params = sum(n for name, module, n in info.parameter_modules if module == info.head)
    assert first["trainable_params"] == head_params
    last = describe_plan(info, plan.at_epoch(len(info.stage_groups)))
    assert last["trainable_params"] == last["total_params"]


def test_gradual_phases_are_what_each_epochs_plan_trains(resnet18):
    info = resnet18.info
    config = PlanConfig(strategy="gradual", gradual_every=2, edits=(PlanEdit("layer1", frozen=True),
                                                                    PlanEdit("layer2.1", frozen=False)))
    plan = build_plan(config, info)
    report = describe_plan(info, plan)
    assert [p["epoch"] for p in report["phases"]] == [2, 4, 6, 10]  # layer1 stays frozen: no phase of its own
    for phase in report["phases"]:
        at = describe_plan(info, plan.at_epoch(phase["epoch"]))["trainable_params"]
        before = describe_plan(info, plan.at_epoch(phase["epoch"] - 1))["trainable_params"]
        assert phase["trainable_params"] == at > before
    for layer in info.layers:  # the tooltip's "trains from epoch N" is the first epoch it trains
        first = plan.effective(layer.name).unfreeze_epoch
        if first is not None and layer.params:
            assert plan.at_epoch(first).effective(layer.name).frozen is False
            assert plan.at_epoch(first - 1).effective(layer.name).frozen is True


def test_the_summary_of_a_gradual_plan_says_what_trains_when(resnet18):
    def summary(config):
        return summary_line(describe_plan(resnet18.info, build_plan(config, resnet18.info)))

    assert summary(PlanConfig(strategy="gradual")) == (
        "Trainable 5,130 / 11,181,642 (0.05 %) now; all from epoch 6 (gradual, one more stage every epoch) · 1 LR group now")
    assert summary(PlanConfig(strategy="gradual", gradual_every=3)).endswith(
        "all from epoch 16 (gradual, one more stage every 3 epochs) · 1 LR group now")
    partial = summary(PlanConfig(strategy="gradual", edits=(PlanEdit("layer1", frozen=True),)))
    assert "; 11,033,674 (98.68 %) from epoch 6 (gradual, more at epochs 2, 3, 4, 6)" in partial
    assert summary(PlanConfig(strategy="discriminative")) == "Trainable 11,181,642 / 11,181,642 (100.00 %) · 6 LR groups"
