"""Several processes training one run: the process group torchrun describes in the environment.

torchrun (or a cluster's launcher) starts one process per rank and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `ProcessGroup.from_env()` reads them; without them it
is the single process of every other run (`SINGLE`), which never creates a process group nor a
DDP wrapper, so a one-process run takes exactly the code path it always took.

Backend: gloo on CPU, nccl on CUDA with one GPU per rank (cuda:LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import RunFailed, UserError
from engine.distributed.launch import ANOTHER_PROCESS_FAILED
from engine.plan.plan import is_pinned_eval

ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class ProcessGroup:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ProcessGroup:
        """The ranks torchrun set up; SINGLE when the environment names none."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return SINGLE
        try:
            world, rank, local = (int(env.get(name, "0")) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them)") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise UserError(f"inconsistent process group: RANK {rank}, WORLD_SIZE {world}, LOCAL_RANK {local}")
        return cls(world_size=world, rank=rank, local_rank=local)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per rank: a CUDA run uses cuda:LOCAL_RANK, whatever index was asked for."""
        if not self.is_distributed or requested.type != "cuda":
            return requested
        if self.local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {self.rank} needs cuda:{self.local_rank} but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s); start fewer processes per node")
        return torch.device("cuda", self.local_rank)

    # --- the process group's life ---------------------------------------------------------------

    @contextlib.contextmanager
    def started(self, device_type: str):
        """The torch.distributed process group for the duration of a run (nothing on one process)."""
        if not self.is_distributed:
            yield self
            return
        import torch.distributed as dist

        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(self.device(torch.device("cuda")))  # one line, not a traceback, when GPUs are too few
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        try:
            yield self
        finally:
            dist.destroy_process_group()

    # --- collectives (each a no-op on one process) ------------------------------------------------

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (in place, and returned)."""
        if self.is_distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.is_distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def gather_to_main(self, value: Any) -> list[Any] | None:
        """Every rank's `value`, in rank order, on rank 0; None on the others."""
        if not self.is_distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def raise_if_any_failed(self, error: UserError | None) -> None:
        """Every rank learns whether any rank refused to go on (e.g. rank 0 found the run folder in
        use), so all of them stop with the same one line instead of waiting in a collective."""
        errors = self.gather_objects(None if error is None else str(error))
        if error is not None:
            raise error
        for rank, message in enumerate(errors):
            if message is not None:
                raise UserError(f"rank {rank}: {message}")

    # --- the model --------------------------------------------------------------------------------

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` under DistributedDataParallel, built for the parameters that train now (DDP
        registers only those with requires_grad, so frozen ones stay outside its reducer); the
        module itself on one process, or when nothing in it trains yet."""
        if not self.is_distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def with_main_buffers(self, module: nn.Module) -> nn.Module:
        """`module` with rank 0's buffers (BatchNorm running statistics) on every rank, returned.
        Norm layers the plan pinned to eval mode are left alone: their statistics never change, and
        each rank's own copy is what its freeze-integrity check must see."""
        if self.is_distributed:
            import torch.distributed as dist

            for part in module.modules():
                if not is_pinned_eval(part):
                    for buffer in part.buffers(recurse=False):
                        dist.broadcast(buffer, src=0)
        return module

    def uneven_steps(self, module: nn.Module):
        """The context an epoch runs in: a rank whose share ran out of batches first (uneven last
        batches) shadows the others' gradient all-reduces instead of leaving them waiting."""
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(module, DistributedDataParallel):
            return contextlib.nullcontext()
        from torch.distributed.algorithms import Join

        return Join([module])


SINGLE = ProcessGroup()


# --- another rank gone -------------------------------------------------------------------------------

def lost_another_process(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another rank is gone: gloo raises a plain
    RuntimeError from its transport ("Connection closed by peer"), nccl a DistBackendError."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "gloo" in str(exc).lower())


@contextlib.contextmanager
def lost_processes_fail_the_run(group: ProcessGroup):
    """Inside: a collective that fails because another rank failed first (its own error is that
    rank's to report) ends this rank with one line, RunFailed, instead of the backend's traceback."""
    try:
        yield
    except RuntimeError as exc:
        if not group.is_distributed or not lost_another_process(exc):
            raise
        first = re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).strip().splitlines() or [""])[0])  # no gloo source line
        detail = first.split(". ")[0] or type(exc).__name__
        raise RunFailed(f"{ANOTHER_PROCESS_FAILED} ({detail})") from None
