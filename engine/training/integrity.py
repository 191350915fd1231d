"""Freeze integrity: proof that what the plan froze is still exactly what was loaded.

Before the first step every tensor the plan promises will not change is fingerprinted: the
parameters and buffers (BatchNorm running statistics included) of frozen modules, except the
buffers of norm layers the person let update. After every epoch each is fingerprinted again and
compared bit for bit. A fingerprint is 128 bits of a SHA-256 digest of the tensor's bytes, taken one
tensor at a time, so the check never holds a second copy of the model.

Whatever changed a frozen tensor (a hook, a stray `model.train()`, a bug), the run is defective:
the epoch's record names the tensors and the run stops with FrozenTensorsChanged.

Runs that copy one model as built (a search's trials, engine.training.shared_parts) share a
FrozenReference: the built model itself, never trained. A tensor that equals its reference when first
promised takes the reference's fingerprint (hashed once for all the runs) and is checked by comparing
it with the reference bit for bit, at memory speed, instead of hashing it after every epoch.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from engine.errors import FrozenTensorsChanged
from engine.events import EpochEvent, IntegrityReport
from engine.listener import Listener
from engine.model.architectures import NORM_TYPES
from engine.plan.plan import Plan

MAX_NAMED = 8  # tensors named in the one-line failure message; metrics.jsonl lists them all
HASHING_THREADS = min(4, os.cpu_count() or 1)


SCHEME = "sha256:"  # SHA-256 runs on the CPU's SHA instructions, BLAKE2b has none: 1.3-1.9x as fast on this 2-core CPU


def fingerprint(tensor: torch.Tensor, like: str | None = None) -> str:
    """128 bits of the SHA-256 of the tensor's dtype, shape and bytes, as "sha256:<hex>". `like`: the
    fingerprint it is compared with; one stored before this scheme (resume.pt of an older run: bare
    hex) is matched by a fingerprint taken its way, BLAKE2b."""
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    legacy = like is not None and not like.startswith(SCHEME)
    digest = hashlib.blake2b(digest_size=16) if legacy else hashlib.sha256()
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy())
    # text, so resume.pt stays loadable with weights_only=True
    return digest.hexdigest() if legacy else SCHEME + digest.hexdigest()[:32]


_SAME_SIZE_INTEGERS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bytes element by element (NaN equals the same NaN, -0.0 is
    not 0.0), whatever their strides: compared as integers of the elements' size."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    integers = _SAME_SIZE_INTEGERS.get(a.element_size())
    if integers is None or a.is_complex():
        return fingerprint(a) == fingerprint(b)
    return torch.equal(a.detach().view(integers), b.detach().view(integers))


class FrozenReference:
    """A model as built, kept untrained for the runs that train copies of it: a copy's tensor that
    still equals the reference's is unchanged; the reference's fingerprints are hashed once."""

    def __init__(self, built: nn.Module) -> None:
        self._tensors = built.state_dict()
        self._fingerprints: dict[str, str] = {}
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}  # copies where runs train (a GPU)

    def same(self, name: str, tensor: torch.Tensor) -> bool:
        reference = self._tensors.get(name)
        if reference is None:
            return False
        if reference.device != tensor.device:
            key = (name, tensor.device)
            if key not in self._on_device:
                self._on_device[key] = reference.to(tensor.device)
            reference = self._on_device[key]
        return same_bits(reference, tensor)

    def fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            self._fingerprints[name] = fingerprint(self._tensors[name])
        return self._fingerprints[name]


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
    """Fingerprints the promised tensors once; checks them after every epoch; stops a broken run.
    With a `reference` (the model this one was copied from), tensors equal to it are checked against it."""

    def __init__(self, model: nn.Module, reference: FrozenReference | None = None) -> None:
        self.model, self.reference = model, reference
        self.fingerprints: dict[str, str] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._referenced: set[str] = set()  # promised tensors that equalled the reference when first seen
        self._plan: Plan | None = None  # the plan self._tensors were promised by
        self.last_report: IntegrityReport | None = None

    @property
    def promised_names(self) -> set[str]:
        """The state-dict names of what the plan in force keeps unchanged."""
        return set(self._tensors)

    # Kept across a resume, so a continued run is checked against the weights first loaded.
    def state_dict(self) -> dict:
        return {"fingerprints": dict(self.fingerprints)}

    def load_state_dict(self, state: dict) -> None:
        self.fingerprints = dict(state["fingerprints"])

    def on_epoch_start(self, epoch: int, plan: Plan) -> None:
        """Track exactly what `plan` promises: gradual unfreezing releases tensors, and tensors
        seen for the first time are fingerprinted now, before they take part in a step."""
        if plan is self._plan:  # the same plan as last epoch (no unfreezing): the same tensors
            return
        self._plan = plan
        promised = promised_tensors(self.model, plan)
        self._tensors = promised
        self.fingerprints = {name: self.fingerprints.get(name) or self._first_fingerprint(name, t)
                             for name, t in promised.items()}

    def _first_fingerprint(self, name: str, tensor: torch.Tensor) -> str:
        if self.reference is not None and self.reference.same(name, tensor):
            self._referenced.add(name)
            return self.reference.fingerprint(name)
        return fingerprint(tensor)

    def _unchanged(self, name: str, tensor: torch.Tensor) -> bool:
        if name in self._referenced:
            return self.reference.same(name, tensor)
        stored = self.fingerprints[name]
        return fingerprint(tensor, like=stored) == stored

    def check(self, epoch: int) -> IntegrityReport:
        # hashlib lets go of the GIL while it hashes: the tensors are hashed on every core at once
        # (resnet18's 120 frozen tensors: 55 ms a check on one core of this 2-core CPU).
        with ThreadPoolExecutor(max_workers=HASHING_THREADS) as pool:
            unchanged = list(pool.map(self._unchanged, self._tensors, self._tensors.values()))
        changed = tuple(name for name, same in zip(self._tensors, unchanged) if not same)
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
