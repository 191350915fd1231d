"""Every architecture the window and the CLI offer builds, trains a step at its smallest image size,
has plain torchvision state-dict keys and exports; image sizes an architecture cannot take are
refused in one line."""

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import regnet

from engine.model.checkpoint import atomic_torch_save, make_checkpoint
from engine.errors import UserError
from engine.deploy.export import export
from engine.model.architectures import (FEATURED_ARCHS, available_archs, build_model, check_image_size, image_size_step,
                           load_backbone_weights, min_image_size, plain_model, valid_image_size)
from tests.conftest import place_imagenet_weights

K = 3
OFFERED = available_archs()
# Above this many parameters only the new head trains in the one-step test: the backward pass and the
# optimizer step over hundreds of millions of weights (vit_h_14, regnet_y_128gf, vit_l_*, vgg*, ...)
# would take most of this file's time budget on a 2-core CPU, and the head-only step still runs the
# whole model forward in train mode (batch-norm statistics, auxiliary outputs, size checks).
WHOLE_MODEL_STEP_UP_TO = 100_000_000
# The fast tier steps one architecture of each kind of head and size rule; the slow tier steps them all.
FAST_TIER_ARCHS = {"resnet18", "mobilenet_v3_small", "squeezenet1_1", "googlenet", "vit_b_16"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: a second intra-op thread only spins (this file took 3x the CPU time with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchvision_reference(arch: str, image_size: int, monkeypatch) -> torch.nn.Module:
    """torchvision's own model of `arch` for K classes, on the meta device (shapes only, no memory)."""
    kwargs = {}
    if arch in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": False}  # as torchvision's pretrained GoogLeNet
    elif arch.startswith("vit_"):
        kwargs = {"image_size": image_size}
    elif arch.startswith("maxvit_"):
        kwargs = {"input_size": (image_size, image_size)}
    if arch.startswith("regnet_"):
        # RegNet computes its stage widths with tensors and reads them back: do that part on the CPU.
        widths = regnet.BlockParams.from_init_params.__func__

        def on_cpu(cls, *args, **kw):
            with torch.device("cpu"):
                return widths(cls, *args, **kw)

        monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))
    with torch.device("meta"):
        return torchvision.models.get_model(arch, num_classes=K, **kwargs)


def train_one_step(model: torch.nn.Module, head: str, image_size: int, whole_model: bool) -> torch.Tensor:
    if not whole_model:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head + "."))
    head_weight = model.get_submodule(head).weight
    before = head_weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    logits = model(torch.randn(2, 3, image_size, image_size))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, K)  # the trainer calls logits.float()
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(head_weight, before)
    return loss


@pytest.mark.parametrize("arch", [arch if arch in FAST_TIER_ARCHS else pytest.param(arch, marks=pytest.mark.slow)
                                  for arch in OFFERED])
def test_offered_architecture_trains_a_step_at_its_smallest_size(arch, monkeypatch):
    size, reason = min_image_size(arch)
    assert arch in reason and "\n" not in reason
    torch.manual_seed(0)
    built = build_model(arch, K, "none", size)
    reference = torchvision_reference(arch, size, monkeypatch)
    ours, theirs = built.model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert built.info.total_params == sum(p.numel() for p in reference.parameters())
    assert built.info.stages[-1] == built.info.head and built.info.image_size == size
    whole = built.info.total_params <= WHOLE_MODEL_STEP_UP_TO
    train_one_step(built.model, built.info.head, size, whole_model=whole)


def test_featured_architectures_are_offered():
    assert set(FEATURED_ARCHS) <= set(OFFERED)
    assert {"googlenet", "inception_v3", "squeezenet1_0", "vit_h_14", "maxvit_t", "swin_v2_b"} <= set(OFFERED)


def test_an_architecture_without_a_known_size_rule_is_not_offered(monkeypatch):
    listed = torchvision.models.list_models(module=torchvision.models)
    monkeypatch.setattr(torchvision.models, "list_models", lambda module=None: listed + ["newnet_b0"])
    assert "newnet_b0" not in available_archs() and "resnet18" in available_archs()
    with pytest.raises(UserError, match="unknown architecture 'newnet_b0'"):
        build_model("newnet_b0", K, "none")


# --- image sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, size, reason", [
    ("resnet18", 16, "any size from 16 px"),
    ("vit_b_16", 16, "multiple of 16 px"),
    ("vit_h_14", 28, "multiple of 14 px"),
    ("inception_v3", 75, "at least 75 px"),
    ("alexnet", 63, "at least 63 px"),
    ("maxvit_t", 224, "multiple of 224 px"),
    ("squeezenet1_1", 17, "at least 17 px"),
])
def test_min_image_size_and_reason(arch, size, reason):
    assert min_image_size(arch) == (size, min_image_size(arch)[1])
    assert reason in min_image_size(arch)[1]


def test_sizes_an_architecture_cannot_take_are_refused_in_one_line():
    with pytest.raises(UserError) as info:
        check_image_size("vit_b_16", 40)
    message = str(info.value)
    assert "40" in message and "multiple of 16" in message and "48 px" in message and "\n" not in message
    with pytest.raises(UserError, match="75 px"):
        check_image_size("inception_v3", 64)
    with pytest.raises(UserError, match="too small for resnet18"):
        check_image_size("resnet18", 8)
    with pytest.raises(UserError, match="multiple of 224"):
        check_image_size("maxvit_t", 300)
    with pytest.raises(UserError, match="unknown architecture"):
        check_image_size("resnet19", 224)
    for arch, size in (("vit_b_16", 48), ("vit_h_14", 224), ("inception_v3", 96), ("maxvit_t", 448), ("resnet18", 17)):
        check_image_size(arch, size)


def test_valid_image_size_is_the_nearest_valid_size_not_below():
    assert [image_size_step(a) for a in ("resnet18", "vit_b_16", "vit_h_14", "maxvit_t")] == [1, 16, 14, 224]
    assert valid_image_size("vit_b_16", 40) == 48
    assert valid_image_size("vit_b_16", 48) == 48
    assert valid_image_size("vit_h_14", 224) == 224
    assert valid_image_size("vit_h_14", 20) == 28
    assert valid_image_size("maxvit_t", 225) == 448
    assert valid_image_size("inception_v3", 32) == 75
    assert valid_image_size("resnet50", 8) == 16
    assert valid_image_size("resnet50", 33) == 33


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in OFFERED if a.startswith(("vit_", "maxvit_"))])
def test_models_built_for_their_image_size_run_at_the_next_valid_size(arch):
    size = valid_image_size(arch, min_image_size(arch)[0] + 1)  # vit_b_16: 32, maxvit_t: 448
    with torch.device("meta"):  # shapes only: checks the patch grid and window partition, costs nothing
        model = plain_model(arch, K, size).train()
        assert model(torch.empty(2, 3, size, size)).shape == (2, K)


def test_build_refuses_a_bad_size_with_a_user_error_not_an_assertion():
    with pytest.raises(UserError, match="multiple of 16"):
        build_model("vit_b_16", K, "none", 40)
    with pytest.raises(UserError, match="at least 75 px"):
        build_model("inception_v3", K, "none", 64)


# --- the architectures that needed care -------------------------------------------------------


@pytest.mark.slow
def test_googlenet_and_inception_return_plain_logits_in_train_mode():
    # Failed before: GoogLeNet returned GoogLeNetOutputs ('...' object has no attribute 'float' in the
    # trainer), Inception's auxiliary head raised "Output size is too small" at 96 px.
    for arch, size in (("googlenet", 32), ("inception_v3", 96), ("inception_v3", 299)):
        with torch.device("meta"):
            model = plain_model(arch, K, size).train()
            out = model(torch.empty(2, 3, size, size))
        assert type(out) is torch.Tensor and out.shape == (2, K)
        assert not any(name.startswith(("aux", "AuxLogits")) for name, _ in model.named_children())


@pytest.mark.slow
@pytest.mark.parametrize("arch, size", [("googlenet", 32), ("inception_v3", 75)])
def test_imagenet_weights_with_auxiliary_heads_load(arch, size, tmp_path):
    # torchvision's ImageNet files hold the auxiliary classifiers, which our model does not have.
    source = torchvision.models.get_model(arch, num_classes=1000, aux_logits=True, init_weights=False)
    state = source.state_dict()
    assert any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
    torch.save(state, tmp_path / "imagenet.pth")
    place_imagenet_weights(arch, tmp_path / "imagenet.pth")
    built = build_model(arch, K, "imagenet", size)
    ours = built.model.state_dict()
    assert not any(k.startswith(("aux1.", "aux2.", "AuxLogits.")) for k in ours)
    assert all(torch.equal(ours[k], state[k]) for k in ours if not k.startswith("fc."))
    assert ours["fc.weight"].shape[0] == K
    assert any("auxiliary" in note and "dropped" in note for note in built.notes)
    assert built.model.transform_input  # the ImageNet weights expect inputs scaled to [-1, 1]
    built.model.train()
    assert isinstance(built.model(torch.randn(2, 3, size, size)), torch.Tensor)


def test_squeezenet_head_is_its_final_convolution():
    built = build_model("squeezenet1_1", K, "none", 17)
    assert built.info.head == "classifier.1" and not built.info.head_is_linear
    assert built.model.get_submodule("classifier.1").out_channels == K
    imagenet = torchvision.models.squeezenet1_1(num_classes=1000).state_dict()
    notes = load_backbone_weights(built.model, imagenet, source="ImageNet weights")
    assert any("head" in note and "dropped" in note for note in notes)
    assert torch.equal(built.model.state_dict()["features.0.weight"], imagenet["features.0.weight"])


def test_mnasnet_loads_state_dicts_without_version_metadata():
    built = build_model("mnasnet0_5", K, "none", 16)
    plain = {k: v.clone() for k, v in built.model.state_dict().items()}  # as checkpoints and safetensors hold it
    assert not hasattr(plain, "_metadata")
    other = plain_model("mnasnet0_5", K, 16)
    other.load_state_dict(plain, strict=True)
    assert torch.equal(other.state_dict()["layers.0.weight"], plain["layers.0.weight"])
    imagenet = torchvision.models.mnasnet0_5(num_classes=1000).state_dict()  # carries versions: kept
    assert any("head" in n and "dropped" in n for n in load_backbone_weights(built.model, imagenet, "ImageNet weights"))


def test_vit_parameter_count_describes_the_model_at_its_image_size():
    small, full = build_model("vit_b_16", K, "none", 32).info, build_model("vit_b_16", K, "none", 224).info
    hidden = 768
    assert full.total_params - small.total_params == (14 * 14 - 2 * 2) * hidden  # position embeddings
    assert small.layer("encoder").params == full.layer("encoder").params - (14 * 14 - 2 * 2) * hidden
    assert (small.image_size, full.image_size) == (32, 224)


@pytest.mark.slow
def test_vit_imagenet_weights_are_resized_to_another_image_size():
    at_224 = build_model("vit_b_16", 1000, "none", 224).model.state_dict()
    built = build_model("vit_b_16", K, "none", 64)
    notes = load_backbone_weights(built.model, at_224, source="ImageNet weights")
    assert any("position embeddings" in n and "14x14 to a 4x4" in n for n in notes)
    state = built.model.state_dict()
    assert state["encoder.pos_embedding"].shape == (1, 4 * 4 + 1, 768)
    assert torch.equal(state["encoder.pos_embedding"][:, :1], at_224["encoder.pos_embedding"][:, :1])
    assert torch.equal(state["encoder.layers.encoder_layer_0.mlp.0.weight"],
                       at_224["encoder.layers.encoder_layer_0.mlp.0.weight"])


# --- export -----------------------------------------------------------------------------------


def save_checkpoint(built, folder: Path) -> Path:
    checkpoint = folder / "checkpoint.pt"
    atomic_torch_save(make_checkpoint(built.model, arch=built.info.arch, class_names=["a", "b", "c"],
                                      preprocessing=built.preprocessing.to_dict(), plan={}, metrics={}, epoch=0,
                                      config={}), checkpoint)
    return checkpoint


def calibrate_norm_statistics(model: torch.nn.Module, size: int) -> None:
    """Batch-norm statistics of a batch, as a trained model has: with the initial ones (mean 0, variance 1)
    an untrained Inception's logits reach 1e7."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1)))
    model.eval()


ALL_FORMATS = ("pt", "safetensors", "torchscript", "onnx")


@pytest.mark.slow
@pytest.mark.parametrize("arch, formats", [
    ("googlenet", ALL_FORMATS), ("squeezenet1_1", ALL_FORMATS), ("inception_v3", ("safetensors",)),
    ("vit_b_16", ("safetensors",)), ("mnasnet0_5", ("pt", "safetensors")),
])
def test_architectures_built_their_own_way_export(arch, formats, tmp_path):
    """Every export starts by loading the checkpoint back (load_classifier, as the pt format is read) and
    rebuilds the model with plain_model: these are the architectures it builds with
    settings of their own (no auxiliary heads, transform_input, a position embedding for the image size),
    whose head is a convolution, or which refuse a state dict without versions (MNASNet). Every offered architecture was exported to all four formats by a
    one-off sweep when this file was written; its time budget allows only these here."""
    size, _ = min_image_size(arch)
    torch.manual_seed(0)
    built = build_model(arch, K, "none", size)
    calibrate_norm_statistics(built.model, size)
    with torch.no_grad():  # a ViT's new head starts at zero: its logits would all be 0, agreeing trivially
        built.model.get_submodule(built.info.head).weight.normal_(0, 0.05)
    checkpoint = save_checkpoint(built, tmp_path)
    batch = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = float(built.model(batch).abs().max())
    # Untrained, these models' logits reach the hundreds (Inception's ~600), where float32 rounding alone
    # differs by 1e-2 between runtimes: the gate is relative here (1e-4 of the largest logit).
    tolerance = 1e-4 * max(1.0, scale)
    for fmt in formats:
        assert_matches_the_model(export(checkpoint, fmt, None, batch, tolerance=tolerance), batch, tolerance)


def assert_matches_the_model(report, batch: torch.Tensor, tolerance: float = 1e-4) -> None:
    """What the parity gate measured, checked here rather than trusted: export raises on a failed
    gate, so `report.passed` alone could never be False in a test."""
    assert Path(report.path).is_file() and Path(report.path).stat().st_size > 0
    assert report.images == len(batch)
    assert report.top1_agreement == 1.0
    assert report.max_abs_logit_diff <= tolerance


@pytest.mark.slow
def test_a_format_an_architecture_cannot_take_fails_in_one_line(tmp_path, capfd):
    checkpoint = save_checkpoint(build_model("alexnet", K, "none", 63), tmp_path)
    batch = torch.randn(2, 3, 63, 63)
    with pytest.raises(UserError) as info:
        export(checkpoint, "onnx", None, batch)
    message = str(info.value)
    assert "alexnet at 63 px cannot be exported to onnx" in message and "adaptive pooling" in message
    assert "torchscript" in message and "\n" not in message
    assert "graph" not in capfd.readouterr().out  # the exporter was not run: it prints its graph when it fails
    assert_matches_the_model(export(checkpoint, "torchscript", None, batch), batch)


def test_exporter_failures_and_oversized_onnx_are_one_line_user_errors(tmp_path, monkeypatch):
    import engine.deploy.export as ex

    checkpoint = save_checkpoint(build_model("squeezenet1_1", K, "none", 17), tmp_path)
    batch = torch.randn(2, 3, 17, 17)

    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracer cannot follow this\nsecond line of a long explanation")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    with pytest.raises(UserError, match=r"^squeezenet1_1 cannot be exported to torchscript \(RuntimeError: tracer "
                                        r"cannot follow this\); pt and safetensors work") as info:
        export(checkpoint, "torchscript", None, batch)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(ex, "ONNX_MAX_BYTES", 1000)
    with pytest.raises(UserError, match="single ONNX file holds at most 2 GiB; use safetensors or torchscript"):
        export(checkpoint, "onnx", None, batch)
