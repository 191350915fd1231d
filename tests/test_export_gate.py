"""The parity gate is relative to the logits' scale and requires top-1 agreement; checkpoints carry the
constructor arguments that rebuild their model, and the plain-PyTorch snippets (README, Export dialog)
predict as load_classifier does for the architectures built their own way; train refuses more classes
than the README promises to handle."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from engine.deploy.export import ParityError, compare_logits, export
from engine.deploy.predict import load_classifier
from engine.errors import UserError
from engine.model.architectures import MAX_CLASSES, build_model, min_image_size
from engine.model.checkpoint import atomic_torch_save, make_checkpoint
from tests.conftest import ROOT
from tests.helpers import QUICK, cli

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Batches of four small images: a second intra-op thread only spins on this shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_checkpoint(built, folder: Path) -> Path:
    checkpoint = folder / "checkpoint.pt"
    atomic_torch_save(make_checkpoint(built.model, arch=built.info.arch, class_names=CLASSES,
                                      preprocessing=built.preprocessing.to_dict(), plan={}, metrics={}, epoch=0,
                                      config={}), checkpoint)
    return checkpoint


def calibrate_norm_statistics(model: torch.nn.Module, size: int) -> None:
    """One batch's statistics, as a trained model has (the initial ones blow untrained logits up)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1)))
    model.eval()


def images(size: int, count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))


# --- the gate -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def huge_logits(tmp_path_factory):
    """resnet18 whose logits reach ~1e6 (as regnet_y_400mf's and an untrained inception_v3's do)."""
    torch.manual_seed(0)
    built = build_model("resnet18", len(CLASSES), "none", 32)
    calibrate_norm_statistics(built.model, 32)
    with torch.no_grad():
        batch = images(32)
        scale = float(built.model(batch).abs().max())
        built.model.fc.weight.mul_(1e6 / scale)
        built.model.fc.bias.mul_(1e6 / scale)
    return save_checkpoint(built, tmp_path_factory.mktemp("huge")), batch


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt", "onnx"])
def test_a_model_with_huge_logits_passes_the_gate(huge_logits, fmt, tmp_path):
    checkpoint, batch = huge_logits
    report = export(checkpoint, fmt, tmp_path / f"model{'-export.pt' if fmt == 'pt' else '.onnx'}", batch)
    assert report.passed and report.top1_agreement == 1.0
    assert 1e5 < report.logit_scale < 1e7
    assert report.relative_diff == pytest.approx(report.max_abs_logit_diff / report.logit_scale)
    assert report.relative_diff <= report.tolerance == 1e-4
    # Why the gate is relative: float32 rounding of ~1e6 logits (a batch of one against a batch of four, even
    # for the byte-identical pt copy) differs by far more than the old absolute 1e-4.
    assert report.max_abs_logit_diff > 1e-4
    saved = json.loads(Path(report.path + ".parity.json").read_text())
    assert saved["logit_scale"] == report.logit_scale and saved["relative_diff"] == report.relative_diff


def test_a_truly_different_file_still_fails(huge_logits, tmp_path, monkeypatch):
    import engine.deploy.export as ex

    checkpoint, batch = huge_logits
    original = ex.load_any

    def skewed(path, fmt=None):
        loaded = original(path, fmt)
        run = loaded._run
        loaded._run = lambda b: run(b) * 1.01  # 1 % off: the same top-1, a different model
        return loaded

    monkeypatch.setattr(ex, "load_any", skewed)
    with pytest.raises(ParityError) as info:
        export(checkpoint, "safetensors", tmp_path / "bad.safetensors", batch)
    message = str(info.value)
    assert "largest logit difference" in message and "relative, above the tolerance 0.0001" in message
    assert "top-1 agreement 100.0%" in message and "\n" not in message
    saved = json.loads((tmp_path / "bad.safetensors.parity.json").read_text())
    assert not saved["passed"] and saved["relative_diff"] > 1e-3


def test_a_changed_top1_class_fails_even_within_the_tolerance():
    # allowed difference: 1e-4 * 1000 = 0.1; each logit moves 0.08 but class 1 overtakes a 0.15 lead.
    expected = torch.tensor([[1000.0, 999.85, 0.0]])
    report = compare_logits("onnx", Path("m.onnx"), expected, torch.tensor([[999.92, 999.93, 0.0]]),
                            torch.empty(0, 3), 1e-4)
    assert report.relative_diff <= report.tolerance and report.top1_agreement == 0.0 and not report.passed


def test_a_tie_within_the_tolerance_may_fall_either_way():
    expected = torch.tensor([[1000.0, 999.95, 0.0], [5.0, 1.0, 0.0]])
    actual = torch.tensor([[999.97, 999.98, 0.0], [5.0, 1.0, 0.0]])
    report = compare_logits("onnx", Path("m.onnx"), expected, actual, actual[:1], 1e-4)
    assert report.passed and report.top1_agreement == 0.5


# --- checkpoints carry their constructor arguments; the snippets use them -----------------------


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("Loading a checkpoint in plain PyTorch:")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


SNIPPET_CASES = [("googlenet", 32), ("inception_v3", 75), ("mnasnet0_5", 16), ("vit_b_16", 32)]


@pytest.fixture(scope="module", params=SNIPPET_CASES, ids=[arch for arch, _ in SNIPPET_CASES])
def trained_like(request, tmp_path_factory):
    """A checkpoint of an architecture built its own way, with a head that discriminates."""
    arch, size = request.param
    torch.manual_seed(0)
    built = build_model(arch, len(CLASSES), "none", size)
    calibrate_norm_statistics(built.model, size)
    with torch.no_grad():  # a ViT's head starts at zero: every image would tie
        built.model.get_submodule(built.info.head).weight.normal_(0, 0.05)
    return save_checkpoint(built, tmp_path_factory.mktemp(arch)), size


def assert_predicts_as_load_classifier(model: torch.nn.Module, checkpoint: Path, size: int) -> None:
    batch = images(size)
    with torch.no_grad():
        theirs, ours = model.eval()(batch), load_classifier(checkpoint).model(batch)
    assert torch.allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    assert torch.equal(theirs.argmax(1), ours.argmax(1))


@pytest.mark.slow
def test_the_readme_snippet_rebuilds_the_model(trained_like):
    checkpoint, size = trained_like
    scope: dict = {}
    exec(readme_snippet().replace("runs/first/checkpoint.pt", str(checkpoint)), scope)
    assert_predicts_as_load_classifier(scope["model"], checkpoint, size)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_the_export_dialogs_snippet_rebuilds_the_model(trained_like, fmt, tmp_path, monkeypatch):
    from widgets.export_dialog import loading_snippet

    checkpoint, size = trained_like
    # A pt export is a copy of the checkpoint (its gate is tested above); safetensors is written anew.
    path = str(checkpoint) if fmt == "pt" else export(checkpoint, fmt, tmp_path / "m.safetensors", images(size)).path
    classifier = load_classifier(checkpoint)
    meta = {"arch": classifier.arch, "class_names": classifier.class_names,
            "preprocessing": classifier.preprocessing.to_dict()}
    snippet = loading_snippet(fmt, path, meta)
    loading = snippet[snippet.index("import torchvision"):snippet.index("logits =")]  # no image to classify
    scope: dict = {"torch": torch}
    exec(loading, scope)
    assert_predicts_as_load_classifier(scope["model"], checkpoint, size)


def test_the_checkpoint_carries_the_constructor_arguments(trained_like):
    checkpoint, size = trained_like
    ckpt = torch.load(checkpoint, weights_only=True)
    arch = ckpt["arch"]
    expected = {"googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
                "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
                "mnasnet0_5": {}, "vit_b_16": {"image_size": size}}[arch]
    assert ckpt["model_kwargs"] == expected
    assert hasattr(ckpt["model"], "_metadata")  # module versions, which plain MNASNet checks


@pytest.mark.slow
def test_a_checkpoint_without_model_kwargs_still_loads(trained_like, tmp_path):
    checkpoint, size = trained_like
    old = torch.load(checkpoint, weights_only=True)
    del old["model_kwargs"]
    old["model"] = dict(old["model"])  # as written before module versions were kept
    atomic_torch_save(old, tmp_path / "old.pt")
    assert_predicts_as_load_classifier(load_classifier(checkpoint).model, tmp_path / "old.pt", size)


# --- the class bound ---------------------------------------------------------------------------


def test_more_classes_than_the_bound_are_refused_before_building():
    assert MAX_CLASSES == 100_000
    with pytest.raises(UserError, match=r"^100,001 classes are more than the 100,000") as info:
        build_model("resnet18", MAX_CLASSES + 1, "none", 16)
    assert "\n" not in str(info.value)


def test_train_refuses_more_classes_than_the_bound_in_one_line(demo_dir, tmp_path, capsys, monkeypatch):
    import engine.training.setup as setup

    real_scan = setup.scan_dataset

    def too_many_classes(*args, **kwargs):
        scan = real_scan(*args, **kwargs)
        return dataclasses.replace(scan, class_names=tuple(f"c{i}" for i in range(MAX_CLASSES + 1)))

    monkeypatch.setattr(setup, "scan_dataset", too_many_classes)
    rc, _, err = cli(capsys, "train", "--data", demo_dir, "--out", tmp_path / "run", *QUICK)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "more than the 100,000" in lines[-1]
    assert not any("Traceback" in line for line in lines)


def test_min_image_sizes_used_here_are_valid():
    assert all(min_image_size(arch)[0] <= size for arch, size in SNIPPET_CASES)
