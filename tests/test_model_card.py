"""The model card beside every export: its figures are those recomputed from the files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from engine.insight.evaluation import evaluate_run
from engine.model.calibration import fit_temperature
from engine.model.checkpoint import load_checkpoint
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import read_val_logits
from tests.helpers import checkpoint, cli  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    from app.cli import main

    folder = tmp_path_factory.mktemp("exported")
    assert main(["export", str(checkpoint), "--format", "onnx", "--format", "safetensors", "--out", str(folder)]) == 0
    return folder


@pytest.mark.slow
def test_every_export_has_a_card_in_json_and_markdown(exported):
    for name in ("checkpoint.onnx", "checkpoint.safetensors"):
        card = json.loads((exported / f"{name}.card.json").read_text())
        assert card["file"] == name and (exported / f"{name}.card.md").read_text().startswith(f"# Model card: {name}")
        assert card["sha256"] == hashlib.sha256((exported / name).read_bytes()).hexdigest()
        assert card["parity"] == json.loads((exported / f"{name}.parity.json").read_text())


@pytest.mark.slow
def test_the_cards_figures_equal_those_recomputed_from_the_files(checkpoint, exported):
    card = json.loads((exported / "checkpoint.onnx.card.json").read_text())
    ckpt = load_checkpoint(checkpoint)
    folder = RunFolder(checkpoint.parent)
    evaluation = evaluate_run(folder.path)
    assert card["classes"] == ckpt["class_names"] and card["preprocessing"] == ckpt["preprocessing"]
    assert card["configuration"] == json.loads(json.dumps(ckpt["config"]))  # tuples become lists in JSON
    assert card["validation"]["accuracy"] == pytest.approx(evaluation.accuracy)
    assert card["validation"]["balanced_accuracy"] == pytest.approx(evaluation.balanced_accuracy)
    for name, stats in evaluation.per_class.items():
        assert card["validation"]["per_class"][name] == pytest.approx(stats)
    kept = read_val_logits(folder.val_logits_path)
    assert card["calibration"]["temperature"] == pytest.approx(fit_temperature(kept.logits, kept.labels), rel=1e-6)
    assert card["unknown"] == folder.read_run().raw["calibration"]["unknown"]
    assert card["checkpoint"]["weights_sha256"] == ckpt["weights_sha256"]
    # The training data: every image file of the dataset, sorted, with its size.
    root = Path(ckpt["config"]["data"]["root"])
    files = sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*.png"))
    listing = "".join(f"{path}\t{size}\n" for path, size in files)
    assert card["training_data"]["files"] == len(files)
    assert card["training_data"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert card["source_weights"]["weights"] == "none" and card["int8"] is None
    assert {"torch", "torchvision", "onnxruntime"} <= set(card["versions"])


def test_predict_on_an_exported_file_reads_its_card(checkpoint, exported, capsys, tmp_path):
    image = next((checkpoint.parent.parent / "D").rglob("*.png"))
    model = tmp_path / "model.onnx"
    model.write_bytes((exported / "checkpoint.onnx").read_bytes())
    rc, out, _ = cli(capsys, "predict", model, image, "--json")
    assert rc == 0 and not json.loads(out)[0]["calibrated"] and "unknown" not in json.loads(out)[0]  # no card
    card = json.loads((exported / "checkpoint.onnx.card.json").read_text())
    card["calibration"]["temperature"] = 1e6  # every class equally likely
    (tmp_path / "model.onnx.card.json").write_text(json.dumps(card))
    rc, out, _ = cli(capsys, "predict", model, image, "--json")
    result = json.loads(out)[0]
    assert rc == 0 and result["calibrated"] and "unknown" in result
    assert [r["probability"] for r in result["top_k"]] == pytest.approx([1 / len(card["classes"])] * len(result["top_k"]),
                                                                      abs=1e-4)


def test_a_card_without_the_dataset_says_so(checkpoint, tmp_path):
    from engine.deploy.model_card import build_card, data_fingerprint

    assert data_fingerprint(str(tmp_path / "gone")) == {"root": str(tmp_path / "gone"), "found": False}
    card = build_card(checkpoint, checkpoint, "pt")
    assert card["training_data"]["found"] and card["format"] == "pt"
    assert os.path.basename(card["file"]) == "checkpoint.pt"
