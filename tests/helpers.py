"""Builders shared by several test modules (no test module imports another)."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.curation.dataset_edits import JOURNAL_NAME
from engine.data.demo import write_demo_dataset
from engine.events import Callbacks


def make_config(data, out, **overrides) -> RunConfig:
    plan = overrides.pop("plan", PlanConfig(strategy="fine-tune"))
    weights = overrides.pop("weights", "none")
    data_cfg = DataConfig(root=str(data), image_size=32, augment=overrides.pop("augment", "light"),
                          feature_cache=overrides.pop("feature_cache", True))
    train = TrainConfig(epochs=overrides.pop("epochs", 2), batch_size=16, device="cpu", seed=overrides.pop("seed", 0),
                        **overrides)
    return RunConfig(data=data_cfg, model=ModelConfig("resnet18", weights), plan=plan, train=train, out_dir=str(out))


class Recorder(Callbacks):
    def __init__(self):
        self.batches, self.epochs, self.started = [], [], []

    def on_run_started(self, event):
        self.started.append(event)

    def on_batch_end(self, event):
        self.batches.append(event)

    def on_epoch_end(self, event):
        self.epochs.append(event)


# A tiny, quick run: random weights, 32 px, one epoch, head on cached features.
QUICK = ["--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
         "--strategy", "feature-extraction", "--augment", "none"]


needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="symlinks and named pipes of POSIX")


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `transfer-studio ARGV`, run in this process."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(result, code: int, *words: str) -> str:
    """Exit `code`, exactly one line on stderr naming the problem, no traceback."""
    rc, _, err = result
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert rc == code, err
    assert len(lines) == 1, err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    """3 classes x 8 images of 32 px, fresh for each test (tests change it)."""
    return write_demo_dataset(tmp_path / "D", classes=3, per_class=8, size=32, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a quick run, trained once for the module (its own caches, like every test's)."""
    base = tmp_path_factory.mktemp("trained")
    data = write_demo_dataset(base / "D", classes=3, per_class=8, size=32, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_CACHE", str(base / "cache"))
        mp.setenv("TORCH_HOME", str(base / "torch"))
        assert main(["train", "--data", str(data), *QUICK, "--out", str(base / "run")]) == 0
    return base / "run" / "checkpoint.pt"


# --- curation: a dataset of solid colours -------------------------------------------------------------

PER_CLASS, SIZE = 8, 32
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def write_colours(root: Path, seed: int = 0) -> Path:
    """3 classes x 8 noisy solid-colour images of 32 px: a random-ish frozen trunk separates them
    well, so a probe's doubts fall on the planted mistakes, not on the classes themselves."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every dataset file (the journal aside)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != JOURNAL_NAME}


def contents(root: Path) -> Counter:
    """The multiset of file contents: it never shrinks if no file is deleted."""
    return Counter(tree(root).values())


def export_that_knows_no_image(checkpoint: Path, folder: Path) -> Path:
    """A copy of `checkpoint` as an exported model whose card sets an "unknown" threshold no image
    reaches: predict and Try an image then say "none of the classes" for every image."""
    import json

    from engine.model.checkpoint import load_checkpoint

    exported = folder / "model-export.pt"
    exported.write_bytes(checkpoint.read_bytes())
    calibration = load_checkpoint(checkpoint)["calibration"]
    card = {"card_format": 1, "calibration": {"temperature": calibration["temperature"]},
            "unknown": {**calibration["unknown"], "threshold": 1e9}}
    (folder / "model-export.pt.card.json").write_text(json.dumps(card))
    return exported


class Crash(BaseException):
    """A power cut: not an error any code path catches."""


# --- int8: a model that loses accuracy when quantized ------------------------------------------------


def fragile_checkpoint(source: Path, target: Path) -> Path:
    """For int8 tests: `source` with its head refitted to its own validation images (fp32 gets every
    one right) plus a large per-image offset common to every class: no prediction changes, but the
    logits' int8 range grows so wide that the classes' margins vanish inside one quantization step:
    a real int8 drop."""
    import torch

    from engine.deploy.int8 import run_images
    from engine.deploy.predict import load_classifier, preprocess
    from engine.model.checkpoint import load_checkpoint, weights_hash

    ckpt = load_checkpoint(source)
    classifier = load_classifier(source)
    images = run_images(source)
    batch = preprocess([Path(s.path) for s in images.val], images.preprocessing)
    labels = torch.tensor([s.label for s in images.val])
    captured = []
    handle = classifier.model.fc.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        classifier.model(batch)
    handle.remove()
    features = captured[0]
    design = torch.cat([features, torch.ones(len(labels), 1)], dim=1).double()
    targets = torch.nn.functional.one_hot(labels, len(ckpt["class_names"])).double() * 0.2
    solution = torch.linalg.lstsq(design, targets, driver="gelsd").solution.T.float()
    weight, bias = solution[:, :-1].clone(), solution[:, -1].clone()
    varying = features.std(0).argmax()
    weight[:, varying] += 100.0 / max(float(features[:, varying].std()), 1e-6)
    state = {**ckpt["model"], "fc.weight": weight.contiguous(), "fc.bias": bias.contiguous()}
    torch.save({**ckpt, "model": state, "weights_sha256": weights_hash(state)}, target)
    return target
