"""export --int8: static int8 ONNX kept only when top-1 accuracy on the run's validation images falls
by at most --max-drop points; the kept file's accuracy measured again is the one reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.deploy.int8 import image_batches, run_images
from engine.model.checkpoint import load_checkpoint
from tests.helpers import assert_refused, checkpoint, cli, fragile_checkpoint  # noqa: F401 - fixtures

pytest.importorskip("onnxruntime")


def measured_accuracy(model_path: Path, checkpoint_path: Path) -> float:
    import onnxruntime as ort

    images = run_images(checkpoint_path)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    hits = total = 0
    for batch, labels in image_batches(images.val, images.preprocessing):
        hits += int((session.run(None, {name: batch})[0].argmax(1) == np.array(labels)).sum())
        total += len(labels)
    return hits / total


@pytest.fixture(scope="module")
def fragile(checkpoint, tmp_path_factory) -> Path:
    return fragile_checkpoint(checkpoint, tmp_path_factory.mktemp("fragile") / "checkpoint.pt")


@pytest.mark.slow
def test_int8_is_kept_when_the_drop_is_allowed_and_its_accuracy_holds(checkpoint, capsys, tmp_path):
    rc, out, err = cli(capsys, "export", checkpoint, "--format", "onnx", "--int8", "--out", tmp_path, "--json")
    assert rc == 0, err
    report = next(r for r in json.loads(out) if r["format"] == "onnx-int8")
    path = Path(report["path"])
    assert path.is_file() and path.name == "checkpoint.int8.onnx" and report["passed"]
    assert report["accuracy_drop"] <= 1.0 and report["speedup"] > 0
    assert measured_accuracy(path, checkpoint) == pytest.approx(report["int8_accuracy"])
    assert measured_accuracy(tmp_path / "checkpoint.onnx", checkpoint) == pytest.approx(report["fp32_accuracy"])
    assert report["accuracy_drop"] == pytest.approx((report["fp32_accuracy"] - report["int8_accuracy"]) * 100)
    card = json.loads(Path(str(path) + ".card.json").read_text())
    assert card["int8"] == report and card["format"] == "onnx-int8"
    # It predicts like any ONNX file, its card's temperature included.
    image = next((checkpoint.parent.parent / "D").rglob("*.png"))
    rc, out, _ = cli(capsys, "predict", path, image, "--json")
    assert rc == 0 and json.loads(out)[0]["calibrated"]


@pytest.mark.slow
def test_int8_is_refused_when_max_drop_0_meets_a_real_drop(fragile, capsys, monkeypatch):
    monkeypatch.setattr("engine.deploy.int8.sensitive_nodes", lambda path: [])  # no fp32 retry: refuse at once
    rc, out, err = cli(capsys, "export", fragile, "--format", "onnx", "--int8", "--max-drop", "0",
                       "--tolerance", "1e-2", "--json")
    lines = err.strip().splitlines()
    assert rc == 1 and "Traceback" not in err and len(lines) == 2, err  # the fp32 file's line, then the refusal
    assert lines[0].startswith("onnx") and "refused" in lines[1] and "66.7 points" in lines[1], err
    # --json lists the file kept and the int8 entry, refused with the drop measured (what the window shows).
    fp32, int8 = json.loads(out)
    assert fp32["format"] == "onnx" and int8["format"] == "onnx-int8" and int8["passed"] is False
    assert int8["accuracy_drop"] == pytest.approx(66.67, abs=0.01) and int8["speedup"] is None
    assert int8["accuracy_drop"] == pytest.approx((int8["fp32_accuracy"] - int8["int8_accuracy"]) * 100)
    assert not (fragile.parent / "checkpoint.int8.onnx").exists()
    assert (fragile.parent / "checkpoint.onnx").is_file()  # the fp32 file passed its own gate and stays


@pytest.mark.slow
def test_int8_leaves_the_sensitive_nodes_in_fp32_before_refusing(fragile, capsys):
    rc, out, err = cli(capsys, "export", fragile, "--format", "onnx", "--int8", "--max-drop", "0",
                       "--tolerance", "1e-2", "--json")
    assert rc == 0, err
    report = next(r for r in json.loads(out) if r["format"] == "onnx-int8")
    assert report["excluded_nodes"] and report["accuracy_drop"] <= 0
    assert "left in fp32" in err
    assert measured_accuracy(Path(report["path"]), fragile) == pytest.approx(report["int8_accuracy"])


def test_int8_flags_are_checked_before_anything_is_written(checkpoint, capsys, tmp_path):
    assert_refused(cli(capsys, "export", checkpoint, "--format", "pt", "--int8", "--out", tmp_path), 2, "--format onnx")
    assert_refused(cli(capsys, "export", checkpoint, "--max-drop", "2", "--out", tmp_path), 2, "--int8")
    assert_refused(cli(capsys, "export", checkpoint, "--int8", "--max-drop", "nan"), 2, "max-drop")
    assert_refused(cli(capsys, "export", checkpoint, "--int8", "--calibration-images", "0"), 2, "calibration")
    assert not list(tmp_path.iterdir())


def test_int8_without_the_dataset_is_one_line(checkpoint, capsys, tmp_path):
    ckpt = load_checkpoint(checkpoint)
    moved = {**ckpt, "config": {**ckpt["config"], "data": {**ckpt["config"]["data"], "root": str(tmp_path / "gone")}}}
    target = tmp_path / "run" / "checkpoint.pt"
    target.parent.mkdir()
    torch.save(moved, target)
    assert_refused(cli(capsys, "export", target, "--format", "onnx", "--int8"), 2, "gone", "int8")
    assert not (tmp_path / "run" / "checkpoint.int8.onnx").exists()
