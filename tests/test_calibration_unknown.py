"""Calibrated probabilities and unknown images: the temperature fitted on validation logits, ECE
before and after, the unknown threshold, what a run records and what predict reports."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model.calibration import (auroc, calibrate, calibrated_probabilities, expected_calibration_error,
                                      fit_temperature, keep_threshold, known_scores, unknown_rule)
from engine.model.checkpoint import load_checkpoint
from engine.runs.run_folder import RunFolder
from engine.runs.val_logits import read_val_logits
from tests.helpers import assert_refused, checkpoint, cli, export_that_knows_no_image  # noqa: F401 - fixtures


def noisy_logits(n: int, k: int, seed: int = 0, margin: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a classifier right about 3 times in 5: the true class gets `margin` more on average."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), labels] += margin
    return logits, labels


def test_an_over_confident_model_loses_at_least_30_percent_of_its_ece():
    logits, labels = noisy_logits(2000, 5)
    over_confident = logits * 8  # same predictions, far too sure of them
    t = fit_temperature(over_confident, labels)
    before = expected_calibration_error(calibrated_probabilities(over_confident), labels)
    after = expected_calibration_error(calibrated_probabilities(over_confident, t), labels)
    assert t > 2 and after <= 0.7 * before, (t, before, after)
    # Temperature never changes a prediction.
    assert torch.equal(calibrated_probabilities(over_confident, t).argmax(1), over_confident.argmax(1))


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    probabilities = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])
    # Bin of 0.9: accuracy 0.5, gap 0.4; bin of 0.6: accuracy 1.0, gap 0.4; each half the images.
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)


@pytest.mark.parametrize("n", [100, 333, 1000])
def test_the_unknown_threshold_keeps_95_percent_of_validation_images(n):
    logits, labels = noisy_logits(n, 4, seed=n)
    rule = unknown_rule(logits, labels, temperature=1.3)
    kept = (known_scores(logits, rule["score"], 1.3) >= rule["threshold"]).double().mean()
    assert abs(float(kept) - 0.95) <= 0.03 and float(kept) == pytest.approx(rule["validation_kept"])
    assert rule["score"] in ("energy", "max_softmax")
    # The chosen score separates right from wrong at least as well as the other.
    assert rule["error_auroc"][rule["score"]] >= max(a for a in rule["error_auroc"].values() if a is not None)


def test_auroc_and_threshold_edges():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert auroc(torch.tensor([]), torch.tensor([1.0])) is None
    assert keep_threshold(torch.arange(20.0)) == 1.0  # drops 1 of 20
    assert keep_threshold(torch.tensor([5.0])) == 5.0


def test_a_perfectly_separated_validation_set_keeps_a_finite_temperature():
    labels = torch.arange(4).repeat(5)
    logits = torch.nn.functional.one_hot(labels, 4).float() * 10
    result = calibrate(logits, labels)
    assert 0.05 <= result["temperature"] <= 100 and result["nll_after"] <= result["nll_before"]


@pytest.mark.slow
def test_a_run_records_its_calibration_in_run_json_and_the_checkpoint(checkpoint):
    folder = RunFolder(checkpoint.parent)
    recorded = folder.read_run().raw["calibration"]
    assert load_checkpoint(checkpoint)["calibration"] == recorded
    kept = read_val_logits(folder.val_logits_path)
    assert kept.epoch == recorded["epoch"] == load_checkpoint(checkpoint)["epoch"]
    assert recorded["temperature"] == pytest.approx(fit_temperature(kept.logits, kept.labels), rel=1e-6)
    assert recorded["ece_before"] == pytest.approx(
        expected_calibration_error(calibrated_probabilities(kept.logits), kept.labels))
    rule = recorded["unknown"]
    kept_share = (known_scores(kept.logits, rule["score"], recorded["temperature"]) >= rule["threshold"]).double().mean()
    assert float(kept_share) == pytest.approx(rule["validation_kept"]) and float(kept_share) >= 0.95
    # The logits are those of the predictions file's images, in its order.
    predictions = (folder.path / "val_predictions.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in predictions] == list(kept.paths)


@pytest.mark.slow
def test_a_real_model_made_over_confident_gets_its_ece_down(checkpoint):
    kept = read_val_logits(RunFolder(checkpoint.parent).val_logits_path)
    over_confident = kept.logits * 50
    result = calibrate(over_confident, kept.labels)
    assert result["ece_after"] <= 0.7 * result["ece_before"], result


@pytest.mark.slow
def test_predict_reports_calibrated_probabilities_and_raw_on_request(checkpoint, capsys):
    image = next(p for p in (checkpoint.parent.parent / "D").rglob("*.png"))
    calibration = load_checkpoint(checkpoint)["calibration"]
    rc, out, _ = cli(capsys, "predict", checkpoint, image, "--top-k", "3", "--json")
    calibrated = json.loads(out)[0]
    rc_raw, out_raw, _ = cli(capsys, "predict", checkpoint, image, "--top-k", "3", "--json", "--raw")
    raw = json.loads(out_raw)[0]
    assert rc == rc_raw == 0 and calibrated["calibrated"] and not raw["calibrated"]
    # softmax(z / T) from softmax(z): p_i^(1/T), renormalised.
    p = torch.tensor([r["probability"] for r in sorted(raw["top_k"], key=lambda r: r["index"])], dtype=torch.float64)
    expected = p ** (1 / calibration["temperature"])
    expected /= expected.sum()
    got = [r["probability"] for r in sorted(calibrated["top_k"], key=lambda r: r["index"])]
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert calibrated["unknown"] == (calibrated["score"]["value"] < calibration["unknown"]["threshold"])
    assert calibrated["score"]["name"] == calibration["unknown"]["score"]


@pytest.mark.slow
def test_predict_marks_an_image_below_the_threshold_unknown(checkpoint, capsys, tmp_path):
    """A card whose threshold no image reaches: every image is unknown, in JSON and in the text line."""
    image = next(p for p in (checkpoint.parent.parent / "D").rglob("*.png"))
    exported = export_that_knows_no_image(checkpoint, tmp_path)
    rc, out, _ = cli(capsys, "predict", exported, image, "--json")
    assert rc == 0 and json.loads(out)[0]["unknown"] is True
    rc, out, _ = cli(capsys, "predict", exported, image)
    assert rc == 0 and "unknown" in out


@pytest.mark.slow
def test_a_damaged_card_is_one_line(checkpoint, capsys, tmp_path):
    image = next(p for p in (checkpoint.parent.parent / "D").rglob("*.png"))
    exported = tmp_path / "model-export.pt"
    exported.write_bytes(checkpoint.read_bytes())
    (tmp_path / "model-export.pt.card.json").write_text("{not json")
    assert_refused(cli(capsys, "predict", exported, image), 2, "card.json")
    (tmp_path / "model-export.pt.card.json").write_text("[1, 2]")
    assert_refused(cli(capsys, "predict", exported, image), 2, "model card")


@pytest.mark.slow
def test_evaluate_unknown_reports_what_predict_marks(checkpoint, capsys, tmp_path):
    """A folder of images of no class (noise): the share caught is the share predict marks unknown."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "noise"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"noise_{i}.png")
    (folder / "notes.txt").write_text("not an image, not counted")
    rc, out, err = cli(capsys, "evaluate", checkpoint.parent, "--unknown", folder, "--json")
    assert rc == 0, err
    report = json.loads(out)
    rc, out, _ = cli(capsys, "predict", checkpoint, *sorted(folder.glob("*.png")), "--json")
    marked = [r["unknown"] for r in json.loads(out)]
    assert report["unknown_images"] == 12 and report["caught"] == pytest.approx(sum(marked) / 12)
    assert report["false_accept_rate"] == pytest.approx(1 - report["caught"])
    assert 0 <= report["auroc"] <= 1 and report["validation_kept"] >= 0.95
    rc, out, _ = cli(capsys, "evaluate", checkpoint, "--unknown", folder)
    assert rc == 0 and "caught" in out and "AUROC" in out


@pytest.mark.slow
def test_evaluate_unknown_refuses_bad_input_in_one_line(checkpoint, capsys, tmp_path):
    assert_refused(cli(capsys, "evaluate", checkpoint.parent, "--unknown", tmp_path / "missing"), 2, "not a folder")
    assert_refused(cli(capsys, "evaluate", checkpoint.parent, "--unknown", tmp_path), 2, "no image files")
    assert_refused(cli(capsys, "evaluate", checkpoint.parent, "--unknown", tmp_path, "--data", tmp_path), 2, "--data")
