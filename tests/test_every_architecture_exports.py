"""Every offered architecture trains through the product's own trainer at its smallest image size and
exports, or is refused in one line naming the format and why (never a traceback or a failed parity gate).

Slow tier only, and budgeted. Measured on the 2-core CPU (CPU seconds, one intra-op thread): training
plus pt and safetensors costs about 0.5 s + 0.19 s per million parameters (resnet18 1.9 s, resnet50 4.3 s,
swin_t 6.0 s, vit_l_32 58 s); TorchScript and ONNX add 4-8 s more (pt2 6-12 s, more than all the others
together). Every format for all 80 would take about 30 minutes, the cheap formats for all about 18, more
than the whole suite's 15-minute budget (measured in a full run: the 63 took 11 minutes). So here:
- the smallest architecture of each family (the torchvision module that builds it), and the variants
  built from other blocks (OTHER_BLOCKS), train and export to pt, safetensors, TorchScript and ONNX in
  every run of the suite (about 2.5 minutes); those over 50 M parameters (alexnet, vgg11, vit_b_16) to pt
  and safetensors, every format with TRANSFER_STUDIO_SWEEP_ALL=1;
- every other architecture up to 100 M parameters in every format with TRANSFER_STUDIO_SWEEP_ALL=1,
  and the 16 larger ones (vit_h_14, regnet_y_128gf, vit_l_*, vgg13-19, ...: 8 GB of memory for vit_l_32
  alone) with TRANSFER_STUDIO_SWEEP_LARGE=1 as well, in every format too (ONNX refused in one line above
  its 2 GiB file limit); each shares its building code with one run every time;
- pt2 (torch.export) only in the full sweep (tests/test_pt2_export.py tests it on one model every run):
  not cheap.
"""

import functools
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
import torchvision
from torchvision.models import regnet

from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.demo import write_demo_dataset
from engine.deploy.export import ParityError, default_path, export, parity_batch
from engine.errors import UserError
from engine.model.architectures import available_archs, min_image_size
from engine.training.trainer import fit

pytestmark = pytest.mark.slow

OFFERED = available_archs()
CHEAP_FORMATS = ("pt", "safetensors")
# Variants built by other blocks than their family's smallest: Swin V2's attention, EfficientNetV2's fused convolutions.
OTHER_BLOCKS = {"swin_v2_t", "efficientnet_v2_s"}
EVERY_FORMAT = ("pt", "safetensors", "torchscript", "onnx")
EVERY_FORMAT_UP_TO = 50_000_000  # parameters; larger representatives (alexnet, vgg11, vit_b_16): pt and safetensors
LARGE = 100_000_000  # parameters; above it, only with SWEEP_LARGE_ENV set (unless its family's smallest)
SWEEP_LARGE_ENV = "TRANSFER_STUDIO_SWEEP_LARGE"
SWEEP_ALL_ENV = "TRANSFER_STUDIO_SWEEP_ALL"  # every architecture, not one a family
# As in tests/test_architectures.py: above this only the head trains (feature extraction), since the
# backward pass and AdamW's state over hundreds of millions of weights would cost minutes and gigabytes.
WHOLE_MODEL_UP_TO = 100_000_000


def family(arch: str) -> str:
    """The torchvision module whose code builds it: resnet (ResNet, ResNeXt, Wide ResNet), efficientnet, ..."""
    return torchvision.models.get_model_builder(arch).__module__.rpartition(".")[2]


@functools.cache
def parameter_count(arch: str) -> int:
    """On the meta device: shapes only, no memory, no initialisation."""
    kwargs = {"image_size": min_image_size(arch)[0]} if arch.startswith("vit_") else {}
    with _regnet_widths_on_cpu(), torch.device("meta"):
        return sum(p.numel() for p in torchvision.models.get_model(arch, num_classes=2, **kwargs).parameters())


def _regnet_widths_on_cpu():
    """RegNet computes its stage widths with tensors and reads them back: that part runs on the CPU."""
    widths = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return widths(cls, *args, **kwargs)

    return mock.patch.object(regnet.BlockParams, "from_init_params", classmethod(on_cpu))


@functools.cache
def every_format_archs() -> frozenset[str]:
    """The smallest architecture of each family, and OTHER_BLOCKS; worked out when the slow tier runs
    (0.25 s an architecture even on the meta device: not at collection, which every run pays)."""
    families: dict[str, list[str]] = {}
    for arch in OFFERED:
        families.setdefault(family(arch), []).append(arch)
    return frozenset({min(archs, key=parameter_count) for archs in families.values()} | OTHER_BLOCKS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """2 classes x 4 images: one training step of a batch of 2 or more, and validation images to compare on."""
    return write_demo_dataset(tmp_path_factory.mktemp("tiny") / "shapes", classes=2, per_class=4, size=32, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Batches of two tiny images: a second intra-op thread only spins on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_one_epoch(arch: str, dataset: Path, out: Path) -> Path:
    size, _ = min_image_size(arch)
    whole = parameter_count(arch) <= WHOLE_MODEL_UP_TO
    config = RunConfig(
        data=DataConfig(root=str(dataset), image_size=size, augment="none", val_fraction=0.25),
        model=ModelConfig(arch, "none"),
        plan=PlanConfig(strategy="fine-tune" if whole else "feature-extraction"),
        train=TrainConfig(epochs=1, batch_size=6, device="cpu", precision="fp32", seed=0, telemetry=False),
        out_dir=str(out))
    result = fit(config)
    assert result.epochs_run == 1 and result.checkpoint, result
    return Path(result.checkpoint)


def export_or_refuse(checkpoint: Path, arch: str, fmt: str, batch: torch.Tensor, out: Path) -> str:
    """'passed', or 'refused: <reason>' for a format the architecture cannot take (never pt or safetensors)."""
    try:
        report = export(checkpoint, fmt, out, batch)
    except ParityError:
        raise  # a file that differs from the model is a bug, not a refusal
    except UserError as exc:
        message = str(exc)
        assert fmt not in CHEAP_FORMATS, message
        assert "\n" not in message and f"cannot be exported to {fmt}" in message and arch in message, message
        return f"refused: {message}"
    assert report.passed and report.images == len(batch) and Path(report.path).stat().st_size > 0
    return "passed"


@pytest.mark.parametrize("arch", OFFERED)
def test_every_offered_architecture_trains_and_exports(arch, dataset, tmp_path):
    representative = arch in every_format_archs()
    if not representative and os.environ.get(SWEEP_ALL_ENV) != "1":
        pytest.skip(f"its family's smallest model stands for it; set {SWEEP_ALL_ENV}=1 for every architecture")
    if parameter_count(arch) > LARGE and not representative and os.environ.get(SWEEP_LARGE_ENV) != "1":
        pytest.skip(f"{parameter_count(arch) / 1e6:.0f} M parameters: minutes of CPU; set {SWEEP_LARGE_ENV}=1")
    checkpoint = train_one_epoch(arch, dataset, tmp_path / "run")
    batch = parity_batch(checkpoint, limit=2)
    # A large representative's TorchScript and ONNX files are hundreds of MB of plain convolutions and
    # linear layers that smaller families export too: every format for them only in the full sweep, which
    # takes every format, pt2 too, for every architecture it trains (those over LARGE with SWEEP_LARGE_ENV).
    sweep_all = os.environ.get(SWEEP_ALL_ENV) == "1"
    every = (representative and parameter_count(arch) <= EVERY_FORMAT_UP_TO) or sweep_all
    formats = (EVERY_FORMAT + ("pt2",) if sweep_all else EVERY_FORMAT) if every else CHEAP_FORMATS
    outcomes = {fmt: export_or_refuse(checkpoint, arch, fmt, batch, default_path(checkpoint, fmt, tmp_path))
                for fmt in formats}
    assert outcomes["pt"] == outcomes["safetensors"] == "passed"


def test_every_family_exports_in_every_format():
    chosen = every_format_archs()
    assert {family(arch) for arch in chosen} == {family(arch) for arch in OFFERED}
    assert {"resnet18", "googlenet", "inception_v3", "alexnet", "maxvit_t", "vit_b_16"} <= chosen
