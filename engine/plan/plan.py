"""The plan: which modules are frozen and at what learning rate each parameter trains.

Settings live on modules by dotted name (as `named_modules()`); a module without its own setting
inherits its nearest ancestor's, and the root ("") carries the base LR: the root's LR and the base LR
are one value, and setting it keeps the LRs set below (see `apply_edit`). Applying a plan sets
`requires_grad`, keeps the norm layers of frozen modules in eval mode through every
`model.train()` (so their running statistics stay exactly as loaded), and yields one optimizer
param group per distinct (lr, weight decay) holding every trainable parameter exactly once.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from torch import nn

from engine.config import PlanConfig, PlanEdit
from engine.errors import UserError
from engine.model.architectures import NORM_TYPES, ModelInfo


@dataclass(frozen=True)
class Setting:
    frozen: bool | None = None
    lr: float | None = None
    train_norm: bool | None = None  # a frozen module's norm layers update their statistics


@dataclass(frozen=True)
class Effective:
    frozen: bool
    lr: float
    train_norm: bool
    lr_from: str  # the module whose setting gives the LR ("" = base LR)
    frozen_from: str
    unfreeze_epoch: int | None  # gradual unfreezing: the epoch this module becomes trainable


@dataclass(frozen=True)
class Plan:
    settings: dict[str, Setting]  # must contain "" with frozen and lr set
    unfreeze_at: dict[str, int] = field(default_factory=dict)  # module -> first epoch it trains

    @property
    def base_lr(self) -> float:
        return self.settings[""].lr

    def effective(self, module: str) -> Effective:
        frozen = lr = train_norm = None
        frozen_from = lr_from = ""
        unfreeze_epoch = None
        for name in _self_and_ancestors(module):
            s = self.settings.get(name)
            if s is not None:
                if frozen is None and s.frozen is not None:
                    frozen, frozen_from = s.frozen, name
                if lr is None and s.lr is not None:
                    lr, lr_from = s.lr, name
                if train_norm is None and s.train_norm is not None:
                    train_norm = s.train_norm
            # Thawing any module between this one and the one its frozen setting comes from makes it
            # train (`at_epoch`), so it trains from the earliest of those epochs.
            if name in self.unfreeze_at and (frozen is None or name == frozen_from):
                epoch = self.unfreeze_at[name]
                unfreeze_epoch = epoch if unfreeze_epoch is None else min(unfreeze_epoch, epoch)
        return Effective(bool(frozen), float(lr), bool(train_norm), lr_from, frozen_from, unfreeze_epoch)

    def at_epoch(self, epoch: int) -> Plan:
        """The plan in force during `epoch` (0-based): scheduled modules whose time has come train."""
        due = {m for m, e in self.unfreeze_at.items() if e <= epoch}
        if not due:
            return self
        settings = dict(self.settings)
        for module in due:
            settings[module] = replace(settings.get(module, Setting()), frozen=False)
        return Plan(settings, {m: e for m, e in self.unfreeze_at.items() if m not in due})

    def to_dict(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "settings": {name: {k: v for k, v in vars(s).items() if v is not None}
                         for name, s in sorted(self.settings.items())},
            "unfreeze_at": dict(sorted(self.unfreeze_at.items(), key=lambda kv: kv[1])),
        }


def _self_and_ancestors(module: str) -> Iterable[str]:
    name = module
    while name:
        yield name
        name = name.rpartition(".")[0]
    yield ""


def _is_below(name: str, ancestor: str) -> bool:
    return ancestor == "" or name == ancestor or name.startswith(ancestor + ".")


# --- presets and edits ---------------------------------------------------------------------


def build_plan(config: PlanConfig, info: ModelInfo) -> Plan:
    """The strategy preset, then the person's edits in order."""
    if not (config.base_lr > 0 and math.isfinite(config.base_lr)):
        raise UserError(f"base LR must be > 0 and finite, got {config.base_lr}")
    settings, unfreeze_at = _preset(config, info)
    plan = Plan(settings, unfreeze_at)
    for edit in config.edits:
        plan = apply_edit(plan, edit, info)
    return plan


def _preset(config: PlanConfig, info: ModelInfo) -> tuple[dict[str, Setting], dict[str, int]]:
    base = config.base_lr
    below_head = [g for g in info.stage_groups if info.head not in g]
    if config.strategy == "fine-tune":
        return {"": Setting(frozen=False, lr=base)}, {}
    if config.strategy == "feature-extraction":
        return {"": Setting(frozen=True, lr=base), info.head: Setting(frozen=False)}, {}
    if config.strategy in ("discriminative", "gradual"):
        settings = {"": Setting(frozen=config.strategy == "gradual", lr=base), info.head: Setting(frozen=False)}
        unfreeze_at = {}
        # Geometric ramp down from the head: group k below the head trains at base / factor**k,
        # and with gradual unfreezing joins the run at epoch k * every.
        for k, group in enumerate(reversed(below_head), start=1):
            for stage in group:
                settings[stage] = Setting(lr=base / config.discriminative_factor ** k)
                if config.strategy == "gradual":
                    unfreeze_at[stage] = k * config.gradual_every
        if unfreeze_at:
            # With the last group, parameters outside every stage (ViT's class token) thaw too.
            unfreeze_at[""] = max(unfreeze_at.values())
        return settings, unfreeze_at
    if config.strategy == "layer-decay":
        return _layer_decay(base, config.layer_decay, info), {}
    raise UserError(f"unknown strategy '{config.strategy}'")


def _layer_decay(base: float, decay: float, info: ModelInfo) -> dict[str, Setting]:
    """Everything trains; the stage group at depth i of L (the head is L) at base * decay**(L - i).
    timm's param_groups_layer_decay puts the same numbers in an lr_scale that only timm's scheduler
    applies; here they are absolute LRs in the plan, so the optimizer gets exactly what the tree shows.
    Parameters outside every stage (unassigned) train at the base LR, as timm puts them with the head."""
    settings = {"": Setting(frozen=False, lr=base)}
    depth = len(info.stage_groups) - 1
    for i, group in enumerate(info.stage_groups):
        for stage in group:
            settings[stage] = Setting(lr=base * decay ** (depth - i))
    return settings


def apply_edit(plan: Plan, edit: PlanEdit, info: ModelInfo) -> Plan:
    """An edit on a module sets that field for its whole subtree, as checking a parent does.

    One exception: the root's LR is the base LR, so an LR set on the root keeps the LRs set below
    it (a person who changes the base LR does not expect every per-layer LR to vanish silently).
    """
    info.check_module(edit.module)
    settings = dict(plan.settings)
    unfreeze_at = dict(plan.unfreeze_at)
    target = edit.module

    def clear_below(field_name: str) -> None:
        for name in list(settings):
            if name != target and name != "" and _is_below(name, target):
                settings[name] = replace(settings[name], **{field_name: None})

    def set_on_target(**values) -> None:
        settings[target] = replace(settings.get(target, Setting()), **values)

    if edit.frozen is not None:
        clear_below("frozen")
        set_on_target(frozen=edit.frozen)
        unfreeze_at = {m: e for m, e in unfreeze_at.items() if not _is_below(m, target)}
    if edit.lr is not None:
        if not (edit.lr > 0 and math.isfinite(edit.lr)):
            raise UserError(f"LR for '{target}' must be > 0 and finite, got {edit.lr}")
        if target != "":
            clear_below("lr")
        set_on_target(lr=float(edit.lr))
    if edit.inherit_lr and target != "":
        set_on_target(lr=None)
    if edit.train_norm is not None:
        clear_below("train_norm")
        set_on_target(train_norm=edit.train_norm)
    settings = {n: s for n, s in settings.items() if n == "" or s != Setting()}
    return Plan(settings, unfreeze_at)


def with_base_lr(config: PlanConfig, lr: float) -> PlanConfig:
    """`config` with base LR `lr` and no LR edit on the root left to override it, so the base LR
    and the root's LR stay one value; the LRs set below the root are kept."""
    edits = tuple(replace(e, lr=None) if e.module == "" else e for e in config.edits)
    return replace(config, base_lr=float(lr), edits=tuple(e for e in edits if e != PlanEdit(e.module)))


# --- applying a plan to a model ---------------------------------------------------------------


def apply_plan(model: nn.Module, plan: Plan) -> None:
    """Set requires_grad per parameter and pin the norm layers of frozen modules to eval mode."""
    for module_name, module in model.named_modules():
        eff = plan.effective(module_name)
        for param in module.parameters(recurse=False):
            param.requires_grad_(not eff.frozen)
        if isinstance(module, NORM_TYPES):
            if eff.frozen and not eff.train_norm:
                _pin_eval(module)
            else:
                _unpin(module)


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _pin_eval(module: nn.Module) -> None:
    # An instance-level override: model.train() recurses into children and calls this instead,
    # so no training loop (ours or anyone's) can switch the layer back to batch statistics.
    module.train = types.MethodType(_eval_only_train, module)
    nn.Module.train(module, False)


def _unpin(module: nn.Module) -> None:
    if "train" in module.__dict__:
        del module.__dict__["train"]


def is_pinned_eval(module: nn.Module) -> bool:
    return "train" in module.__dict__


@dataclass(frozen=True)
class GroupSpec:
    lr: float
    weight_decay: float
    params: tuple[str, ...]
    label: str  # which modules' settings give this LR, e.g. "layer4" or "base, fc"


def group_specs(info: ModelInfo, plan: Plan, weight_decay: float) -> list[GroupSpec]:
    """One group per distinct (lr, weight decay); every trainable parameter in exactly one."""
    return _group_specs(info, plan.effective, weight_decay)


def _group_specs(info: ModelInfo, effective: Callable[[str], Effective], weight_decay: float) -> list[GroupSpec]:
    grouped: dict[tuple[float, float], list[tuple[str, str]]] = {}
    for param_name, module, _ in info.parameter_modules:
        eff = effective(module)
        if not eff.frozen:
            grouped.setdefault((eff.lr, weight_decay), []).append((param_name, eff.lr_from))
    specs = []
    for (lr, wd), members in sorted(grouped.items(), key=lambda kv: kv[0][0]):
        sources = sorted({src or "base" for _, src in members}, key=lambda s: (s != "base", s))
        label = ", ".join(sources[:3]) + (f" +{len(sources) - 3}" if len(sources) > 3 else "")
        specs.append(GroupSpec(lr, wd, tuple(name for name, _ in members), label))
    return specs


def param_groups(model: nn.Module, specs: list[GroupSpec]) -> list[dict]:
    params = dict(model.named_parameters())
    return [{"params": [params[n] for n in s.params], "lr": s.lr, "weight_decay": s.weight_decay,
             "group_label": s.label} for s in specs]


def describe_plan(info: ModelInfo, plan: Plan, weight_decay: float = 0.0) -> dict:
    """The tree, every parameter and the param groups as plain data (the `layers --json` output,
    and what the window's layer tree shows)."""
    effective = {layer.name: plan.effective(layer.name) for layer in info.layers}  # once per module
    parameters = []
    trainable_under: dict[str, int] = {layer.name: 0 for layer in info.layers}
    thawing_at: dict[int, int] = {}  # epoch -> parameters gradual unfreezing adds then
    for param_name, module, numel in info.parameter_modules:
        eff = effective[module]
        parameters.append({"name": param_name, "trainable": not eff.frozen, "lr": None if eff.frozen else eff.lr})
        if not eff.frozen:
            for name in _self_and_ancestors(module):  # counted in the module and all its ancestors
                trainable_under[name] += numel
        elif eff.unfreeze_epoch is not None:
            thawing_at[eff.unfreeze_epoch] = thawing_at.get(eff.unfreeze_epoch, 0) + numel
    modules = []
    for layer in info.layers:
        eff = effective[layer.name]
        own = plan.settings.get(layer.name, Setting())
        modules.append({
            "name": layer.name, "type": layer.type, "params": layer.params,
            "trainable_params": trainable_under[layer.name], "frozen": eff.frozen, "lr": eff.lr,
            "lr_inherited": own.lr is None, "frozen_inherited": own.frozen is None,
            "train_norm": eff.train_norm, "is_norm": layer.is_norm, "unfreeze_epoch": eff.unfreeze_epoch,
        })
    specs = _group_specs(info, effective.__getitem__, weight_decay)
    return {
        "arch": info.arch,
        "num_classes": info.num_classes,
        "head": info.head,
        "stages": list(info.stages),
        "stage_groups": [list(g) for g in info.stage_groups],
        "modules": modules,
        "parameters": parameters,
        "param_groups": [{"lr": s.lr, "weight_decay": s.weight_decay, "label": s.label,
                          "params": list(s.params)} for s in specs],
        "trainable_params": trainable_under[""],
        "total_params": info.total_params,
        "unassigned": unassigned_parameters(info),
        "phases": _phases(trainable_under[""], thawing_at),
        "plan": plan.to_dict(),
    }


def unassigned_parameters(info: ModelInfo) -> list[str]:
    """Parameters under no stage (a ViT's class token, a timm head's norm that no group claims): no
    preset sets them; they follow the root's settings (the base LR, the root's frozen state)."""
    stages = set(info.stages)
    return [name for name, module, _ in info.parameter_modules
            if not any(a in stages for a in _self_and_ancestors(module) if a)]


def _phases(trainable_now: int, thawing_at: dict[int, int]) -> list[dict]:
    """Gradual unfreezing: from which epoch (0-based) how many parameters train; empty otherwise."""
    phases, trainable = [], trainable_now
    for epoch in sorted(thawing_at):
        trainable += thawing_at[epoch]
        phases.append({"epoch": epoch, "trainable_params": trainable})
    return phases


def never_thawed(plan: Plan, info: ModelInfo, epochs: int) -> list[str]:
    """The stages gradual unfreezing would thaw only after the run's last epoch: they never train."""
    late = []
    for stage in info.stages:
        eff = plan.effective(stage)
        if eff.frozen and eff.unfreeze_epoch is not None and eff.unfreeze_epoch >= epochs:  # 0-based epoch
            late.append(stage)
    return late


def unreached_phases_note(plan: Plan, info: ModelInfo, epochs: int) -> str:
    """One line when a gradual plan's phases go beyond the run's epochs ("" when they fit)."""
    late = never_thawed(plan, info, epochs)
    if not late:
        return ""
    last = max(plan.effective(stage).unfreeze_epoch for stage in late) + 1
    return (f"With {epochs} epoch{'s' if epochs != 1 else ''}, {', '.join(late)} never train: gradual unfreezing "
            f"reaches them from epoch {last}. Set Epochs to {last} or more, or unfreeze every fewer epochs.")


def with_weight_decay(report: dict, weight_decay: float) -> dict:
    """`report` with another weight decay: only the param groups' value changes, nothing else."""
    groups = [{**g, "weight_decay": weight_decay} for g in report["param_groups"]]
    return {**report, "param_groups": groups}


def summary_line(report: dict) -> str:
    """E.g. "Trainable 5,130 / 11,181,642 (0.05 %) · 2 LR groups"; with gradual unfreezing
    "Trainable 5,130 / 11,181,642 (0.05 %) now; all from epoch 6 (gradual, one more stage every
    epoch) · 1 LR group now"."""
    trainable, total = report["trainable_params"], report["total_params"]
    groups = len(report["param_groups"])
    groups_text = f"{groups} LR group{'s' if groups != 1 else ''}"
    share = f"Trainable {trainable:,} / {total:,} ({_percent(trainable, total)})"
    phases = report.get("phases") or []
    if not phases:
        return f"{share} · {groups_text}"
    return f"{share} now; {_final_phase(phases[-1], total)} ({_cadence(phases)}) · {groups_text} now"


def _percent(part: int, total: int) -> str:
    return f"{100 * part / max(1, total):.2f} %"


def _final_phase(phase: dict, total: int) -> str:
    trainable = phase["trainable_params"]
    who = "all" if trainable == total else f"{trainable:,} ({_percent(trainable, total)})"
    return f"{who} from epoch {phase['epoch'] + 1}"


def _cadence(phases: list[dict]) -> str:
    epochs = [0] + [p["epoch"] for p in phases]
    gaps = {later - earlier for earlier, later in zip(epochs, epochs[1:])}
    if len(gaps) == 1:
        gap = gaps.pop()
        return f"gradual, one more stage every {'epoch' if gap == 1 else f'{gap} epochs'}"
    return "gradual, more at epochs " + ", ".join(str(e + 1) for e in epochs[1:])


def audit_optimizer(model: nn.Module, optimizer) -> dict[str, list[str]]:
    """Trainable parameters the optimizer never sees, and frozen ones it holds: both must be empty."""
    names = {id(p): n for n, p in model.named_parameters()}
    in_optimizer: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            in_optimizer[id(p)] = in_optimizer.get(id(p), 0) + 1
    return {
        "orphaned": [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_optimizer],
        "frozen_in_optimizer": [n for n, p in model.named_parameters() if not p.requires_grad and id(p) in in_optimizer],
        "duplicated": [names[i] for i, count in in_optimizer.items() if count > 1 and i in names],
    }
