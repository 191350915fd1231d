"""Freeze integrity: proof that what the plan froze is still exactly what was loaded.

Before the first step every tensor the plan promises will not change is fingerprinted: the
parameters and buffers (BatchNorm running statistics included) of frozen modules, except the
buffers of norm layers the person let update. After every epoch each is fingerprinted again and
compared bit for bit. A fingerprint is a 128-bit BLAKE2 digest of the tensor's bytes, taken one
tensor at a time, so the check never holds a second copy of the model.

Whatever changed a frozen tensor (a hook, a stray `model.train()`, a bug), the run is defective:
the epoch's record names the tensors and the run stops with FrozenTensorsChanged.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from engine.errors import FrozenTensorsChanged
from engine.events import EpochEvent, IntegrityReport
from engine.listener import Listener
from engine.model.architectures import NORM_TYPES
from engine.plan.plan import Plan

MAX_NAMED = 8  # tensors named in the one-line failure message; metrics.jsonl lists them all


def fingerprint(tensor: torch.Tensor) -> str:
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()  # text, so resume.pt stays loadable with weights_only=True


def promised_tensors(model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """State-dict name -> tensor for everything `plan` keeps unchanged."""
    promised: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        effective = plan.effective(module_name)
        if not effective.frozen:
            continue
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            promised[prefix + name] = param
        statistics_may_update = isinstance(module, NORM_TYPES) and effective.train_norm
        if not statistics_may_update:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None:
                    promised[prefix + name] = buffer
    return promised


class FreezeIntegrity(Listener):
    """Fingerprints the promised tensors once; checks them after every epoch; stops a broken run."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.fingerprints: dict[str, str] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        self.last_report: IntegrityReport | None = None

    # Kept across a resume, so a continued run is checked against the weights first loaded.
    def state_dict(self) -> dict:
        return {"fingerprints": dict(self.fingerprints)}

    def load_state_dict(self, state: dict) -> None:
        self.fingerprints = dict(state["fingerprints"])

    def on_epoch_start(self, epoch: int, plan: Plan) -> None:
        """Track exactly what `plan` promises: gradual unfreezing releases tensors, and tensors
        seen for the first time are fingerprinted now, before they take part in a step."""
        promised = promised_tensors(self.model, plan)
        self._tensors = promised
        self.fingerprints = {name: self.fingerprints.get(name) or fingerprint(t) for name, t in promised.items()}

    def check(self, epoch: int) -> IntegrityReport:
        changed = tuple(name for name, tensor in self._tensors.items()
                        if fingerprint(tensor) != self.fingerprints[name])
        self.last_report = IntegrityReport(epoch=epoch, checked=len(self._tensors), changed=changed)
        return self.last_report

    def on_epoch_end(self, event: EpochEvent) -> None:
        report = event.integrity
        if report is None or report.intact:
            return
        named = ", ".join(report.changed[:MAX_NAMED])
        more = f" and {len(report.changed) - MAX_NAMED} more" if len(report.changed) > MAX_NAMED else ""
        raise FrozenTensorsChanged(
            f"frozen tensors changed during epoch {report.epoch}: {named}{more}; the run is stopped "
            f"(something outside the plan modified them, e.g. a hook or a module left in train mode)")
