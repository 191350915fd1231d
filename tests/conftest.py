"""Shared fixtures: everything offline, on CPU, on tiny generated data."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Under pytest-xdist each of the two workers (and the processes its tests start) computes on one thread:
# two OpenMP teams of two on two cores stall each other.
TORCH_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
# The suite's runs are deleted moments after they are written: no test needs them on the disk itself
# (crash tests kill processes, which fsync does not change). tests/test_run_safety.py checks that a
# person's runs are fsynced.
os.environ.setdefault("TRANSFER_STUDIO_NO_FSYNC", "1")
# Several-process tests talk over loopback: gloo then needs no lookup of this machine's host name, which
# a CI machine without a name server can spend seconds on per process.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.data.demo import write_demo_dataset  # noqa: E402

torch.set_num_threads(TORCH_THREADS)

pytest_plugins = ["tests.gui_helpers"]  # the `window` fixture for window tests


class MainThreadCollector:
    """What the window does (app/gc_guard.py), for the whole suite: no automatic garbage collection, so
    a cycle holding a Qt wrapper is never freed on some other thread that happened to allocate (a
    checkpoint saver, a leftover QThread of the previous test), its C++ destructor running there: Qt
    crashed so ('QBasicTimer::start: Timers cannot be started from another thread', a segmentation
    fault in a window test's teardown). The main thread collects after every test instead: what the
    test left, cheaply, since what lived before is frozen; everything once per test file."""

    def __init__(self) -> None:
        self.module = None

    def before(self, module) -> None:
        gc.disable()
        if module is not self.module:  # cycles a file's fixtures left behind, once per file
            self.module = module
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def after(self) -> None:
        gc.collect()  # what this test left: the frozen rest is not looked at
        gc.freeze()
        gc.disable()  # a window's collector turns collection back on when the window closes


_COLLECTOR = MainThreadCollector()


@pytest.fixture(autouse=True)
def _collect_on_the_main_thread(request):
    _COLLECTOR.before(request.node.module)
    yield
    _COLLECTOR.after()


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads the person's caches or downloads: TORCH_HOME and our cache are temporary."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path_factory.getbasetemp() / "ts_cache"))
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """4 classes x 16 images of 40 px: small enough for CPU tests, learnable enough to see progress."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "shapes", classes=4, per_class=16, size=40, seed=0)


@pytest.fixture(scope="session")
def resnet18_weights_file(tmp_path_factory) -> Path:
    """A resnet18 ImageNet-shaped state dict with non-trivial BatchNorm statistics."""
    torch.manual_seed(123)
    model = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet-like.pth"
    torch.save(model.state_dict(), path)
    return path


def place_imagenet_weights(arch: str, source: Path) -> Path:
    """Put a state dict where torchvision's weights API looks for the arch's DEFAULT weights."""
    from engine.model.architectures import weights_cache_path

    target = weights_cache_path(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


@pytest.fixture
def one_intra_op_thread():
    """Tensors this small: a second intra-op thread costs more in hand-offs than it computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
