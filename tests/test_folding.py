"""The trunk pass folds BatchNorm into the convolution before it (a copy): the same features within float
rounding, the model's own tensors untouched, one copy per state of the model's tensors, and a model that
cannot be folded passes as it is."""

from __future__ import annotations

import gc
import weakref

import torch
import torchvision
from torch import nn

from engine.model import folding
from engine.model.features import trunk_forward


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    for module in model.modules():  # statistics as loaded weights have them, not the fresh 0/1
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def unfolded_trunk(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return nn.Sequential(*list(model.children())[:-1])(images).flatten(1)


@torch.no_grad()
def test_folded_trunk_gives_the_models_features_and_leaves_its_tensors_alone():
    model = small_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(4, 3, 48, 48)
    with trunk_forward(model, "fc") as trunk:
        features = trunk(images)
        assert trunk is not model and not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    torch.testing.assert_close(features, unfolded_trunk(model, images), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.fc, nn.Linear)  # the head is back


@torch.no_grad()
def test_one_copy_while_the_tensors_stay_and_a_new_one_when_statistics_change():
    model = small_resnet()
    images = torch.randn(2, 3, 48, 48)
    with trunk_forward(model, "fc") as first:
        pass
    with trunk_forward(model, "fc") as second:
        assert second is first  # the views of one run share a copy
    model.bn1.running_mean.add_(1.0)  # adapted statistics loaded in place (AdaBN)
    with trunk_forward(model, "fc") as third:
        assert third is not first
        torch.testing.assert_close(third(images), unfolded_trunk(model, images), rtol=1e-4, atol=1e-4)


def test_the_cache_keeps_neither_the_model_nor_its_copy_once_the_model_is_gone():
    model = small_resnet()
    with torch.no_grad(), trunk_forward(model, "fc") as trunk:
        pass
    gone, copy_gone = weakref.ref(model), weakref.ref(trunk)
    del model, trunk
    gc.collect()
    assert gone() is None and copy_gone() is None


class DataDependent(nn.Module):
    """torch.fx cannot trace a branch on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_a_model_that_cannot_be_traced_or_has_no_batchnorm_is_used_as_it_is():
    untraceable = DataDependent().eval()
    assert folding.folded_for_inference(untraceable) is untraceable
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    assert folding.folded_for_inference(plain) is plain
    training = small_resnet().train()
    assert folding.folded_for_inference(training) is training


@torch.no_grad()
def test_a_hooked_model_is_not_folded_so_its_hooks_see_the_pass():
    model = small_resnet()
    with trunk_forward(model, "fc"):  # a folded copy is cached for these tensors
        pass
    seen = []
    handle = model.layer2.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with trunk_forward(model, "fc") as trunk:
        trunk(torch.randn(2, 3, 48, 48))
    handle.remove()
    assert trunk is model and len(seen) == 1
