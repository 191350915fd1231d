"""The resize filter comes from the weights' own evaluation transform and reaches every image path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from engine.data.dataset import DecodedCache, Preprocessing, Sample, eval_transform
from engine.deploy.predict import load_classifier, preprocess
from engine.errors import UserError
from engine.model.architectures import preprocessing_for
from engine.model.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint

BICUBIC = Preprocessing(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")


def noise_image(path) -> np.ndarray:
    """Fine random detail: bilinear and bicubic resizing of it differ in most pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (61, 97, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def pil_resized(pixels: np.ndarray, filter_) -> torch.Tensor:
    resized = Image.fromarray(pixels).resize((64, 40), filter_, reducing_gap=None)  # shorter side 61 -> 40
    return eval_transform(32)(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))


@pytest.mark.parametrize(("arch", "expected"), [("resnet18", "bilinear"), ("swin_t", "bicubic"),
                                                ("efficientnet_b0", "bicubic"),
                                                ("timm:vit_tiny_patch16_224", "bicubic")])
def test_the_weights_name_their_resize_filter(arch, expected):
    assert preprocessing_for(arch, 64).interpolation == expected


def test_training_evaluation_and_predict_resize_with_it(tmp_path):
    pixels = noise_image(tmp_path / "a.png")
    bicubic, bilinear = pil_resized(pixels, Image.Resampling.BICUBIC), pil_resized(pixels, Image.Resampling.BILINEAR)
    assert not torch.equal(bicubic, bilinear)
    samples = [Sample(str(tmp_path / "a.png"), 0)]

    assert torch.equal(BICUBIC.dataset(samples, eval_transform(32))[0][0], bicubic)  # decoded on the fly
    cache = DecodedCache(2**20)
    cache.warm(samples, BICUBIC.resize, interpolation=BICUBIC.interpolation)
    assert torch.equal(BICUBIC.dataset(samples, eval_transform(32), cache)[0][0], bicubic)  # from the cache
    assert torch.equal(eval_transform(32)(BICUBIC.decode(tmp_path / "a.png")), bicubic)  # predict, Grad-CAM, int8

    normalized = preprocess([tmp_path / "a.png"], BICUBIC)[0]
    mean, std = torch.tensor(BICUBIC.mean)[:, None, None], torch.tensor(BICUBIC.std)[:, None, None]
    assert torch.allclose(normalized, (bicubic.float() / 255 - mean) / std, atol=1e-5)


def test_a_checkpoint_carries_it_and_older_ones_read_as_bilinear(tmp_path):
    model = torchvision.models.resnet18(num_classes=2)
    ckpt = make_checkpoint(model, arch="resnet18", class_names=["a", "b"], preprocessing=BICUBIC.to_dict(), plan={},
                           metrics={}, epoch=1, config={})
    atomic_torch_save(ckpt, tmp_path / "new.pt")
    assert load_classifier(tmp_path / "new.pt").preprocessing == BICUBIC

    del ckpt["preprocessing"]["interpolation"]  # a checkpoint made before the filter was recorded
    atomic_torch_save(ckpt, tmp_path / "old.pt")
    assert load_classifier(tmp_path / "old.pt").preprocessing.interpolation == "bilinear"

    ckpt["preprocessing"]["interpolation"] = "cubic"
    atomic_torch_save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="preprocessing.interpolation must be one of bilinear, bicubic"):
        load_checkpoint(tmp_path / "bad.pt")
