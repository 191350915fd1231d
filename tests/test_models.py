"""Models: plain torchvision keys, offline ImageNet weights, weights files, clear errors."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from engine.errors import UnsafeFileError, UserError, WeightsUnavailable
from engine.model.architectures import FEATURED_ARCHS, build_model, weights_cache_path
from tests.conftest import place_imagenet_weights


@pytest.mark.slow
@pytest.mark.parametrize("arch", FEATURED_ARCHS)
def test_state_dict_keys_equal_plain_torchvision(arch):
    built = build_model(arch, 7, "none")
    reference = torchvision.models.get_model(arch, num_classes=7)
    ours, theirs = built.model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert built.info.head in {"fc", "classifier.1", "classifier.3", "classifier.2", "heads.head"}
    assert built.info.stages[-1] == built.info.head
    assert built.info.total_params == sum(p.numel() for p in reference.parameters())


def test_imagenet_weights_are_read_from_the_cache_offline(resnet18_weights_file):
    place_imagenet_weights("resnet18", resnet18_weights_file)
    source = torch.load(resnet18_weights_file, weights_only=True)
    built = build_model("resnet18", 5, "imagenet")
    state = built.model.state_dict()
    assert torch.equal(state["layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    assert torch.equal(state["bn1.running_var"], source["bn1.running_var"])
    assert state["fc.weight"].shape == (5, 512)
    assert any("head" in note and "dropped" in note for note in built.notes)


def test_uncached_imagenet_weights_name_the_file_and_folder(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    expected = weights_cache_path("resnet18")
    with pytest.raises(WeightsUnavailable) as info:
        build_model("resnet18", 3, "imagenet")
    message = str(info.value)
    assert expected.name in message and str(expected.parent) in message and "none" in message
    assert "\n" not in message


def test_weights_file_pt_and_safetensors(tmp_path, resnet18_weights_file):
    state = torch.load(resnet18_weights_file, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for path in (resnet18_weights_file, tmp_path / "w.safetensors"):
        built = build_model("resnet18", 1000, str(path))  # same head shape: kept as is
        assert torch.equal(built.model.state_dict()["fc.weight"], state["fc.weight"])
        assert not any("dropped" in n for n in built.notes)


def test_missing_backbone_keys_are_listed(tmp_path, resnet18_weights_file):
    state = torch.load(resnet18_weights_file, weights_only=True)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(UserError, match=r"missing 1 key\(s\): layer1.0.conv1.weight.*unexpected 1 key\(s\): extra.weight"):
        build_model("resnet18", 3, str(tmp_path / "broken.pt"))


def test_unknown_architecture_suggests_names():
    with pytest.raises(UserError, match="unknown architecture 'resnet19'.*resnet18"):
        build_model("resnet19", 3, "none")


class Exploit:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_MARKER'], 'w').write('ran')",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    torch.save({"model": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="arbitrary code"):
        build_model("resnet18", 3, str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_loading_is_refused_while_weights_only_is_disabled(monkeypatch, resnet18_weights_file):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UnsafeFileError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        build_model("resnet18", 3, str(resnet18_weights_file))
