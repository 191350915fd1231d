"""Datasets for tests/test_loader_start_method.py. They live in a module, not in a test function:
a worker started by spawn or forkserver imports the dataset's class by name."""

from __future__ import annotations

import os
import signal

from torch.utils.data import Dataset, get_worker_info


class FailingDataset(Dataset):
    """Every item fails in the worker reading it: `how` is "exit" (exit code 1), "kill" (SIGKILL,
    as the kernel's out-of-memory killer does) or "raise" (an ordinary exception, no death)."""

    def __init__(self, how: str, size: int = 8) -> None:
        self.how, self.size = how, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if get_worker_info() is None or self.how == "raise":
            raise RuntimeError(f"item {index} failed")  # never end the test process itself
        if self.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)
