"""Regression (issue 25): metrics by hand, the standardised target, one trained run reused for
training records, evaluate, export with the parity gate on values, predict and the refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import PlanConfig
from engine.data.dataset import DatasetScan, Sample
from engine.deploy.predict import task_answers
from engine.training.task_metrics import regression_metrics
from engine.training.tasks import CheckpointTask, Regression
from engine.training.trainer import fit
from tests.helpers import cli, make_config

slow = pytest.mark.slow  # the tests sharing the trained run


def test_regression_metrics_by_hand():
    m = regression_metrics(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1.0, 3.0, 3.0]))
    # residuals 0, -1, 2: MAE 1, RMSE sqrt(5/3); SS_tot = 8/3 around 7/3 -> R² = 1 - 5 / (8/3)
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx((5 / 3) ** 0.5)
    assert m["r2"] == pytest.approx(1 - 5 / (8 / 3))
    assert regression_metrics(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]))["r2"] is None


def test_standardised_target_and_its_inverse():
    scan = DatasetScan("r", "csv", ("value",), tuple(Sample(f"{i}", float(v)) for i, v in enumerate([10, 20, 30])),
                       (), (), task="regression")
    task = Regression(scan, SimpleNamespace(loss="huber"), "cpu")
    assert task.mean == pytest.approx(20) and task.scale == pytest.approx((200 / 3) ** 0.5)
    y = torch.tensor([10.0, 30.0])
    logits = task.standardised(y)[:, None]
    assert float(task.loss(logits, y)) == pytest.approx(0.0)
    assert task.values(logits).tolist() == pytest.approx([10.0, 30.0])
    answers = task_answers(logits, ["value"], CheckpointTask("regression", (), task.mean, task.scale))
    assert [a["value"] for a in answers] == pytest.approx([10.0, 30.0])


def _write_data(folder, n=40):
    """A bright bar at x = value (0..21): the target is where it is."""
    rng = np.random.default_rng(1)
    rows = ["path,value"]
    for i in range(n):
        x = int(rng.integers(0, 22))
        img = (rng.random((32, 32, 3)) * 60).astype("uint8")
        img[8:24, x:x + 10, 0] = 255
        Image.fromarray(img).save(folder / f"r{i}.png")
        rows.append(f"r{i}.png,{x}")
    rows += ["r0.png,3", "r1.png,many"]  # a duplicate path and a value that is not a number
    (folder / "values.csv").write_text("\n".join(rows) + "\n")
    return folder / "values.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    csv = _write_data(folder)
    config = make_config(csv, folder / "run", epochs=3, augment="none", loss="huber", early_stopping_patience=5,
                         plan=PlanConfig(strategy="feature-extraction", base_lr=0.01))
    return csv, folder / "run", fit(config)


@slow
def test_training_records_the_task(trained):
    csv, run, result = trained
    assert result.task == "regression" and set(result.best_val_metrics) == {"mae", "rmse", "r2"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all({"val_mae", "val_rmse", "val_r2"} <= set(line) for line in lines)
    assert lines[0]["train_accuracy"] is None and lines[0]["val_accuracy"] is None
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["task"]["name"] == "regression" and checkpoint["task"]["loss"] == "huber"
    assert checkpoint["task"]["scale"] > 0 and checkpoint["class_names"] == ["value"]
    record = json.loads((run / "run.json").read_text())
    reasons = " ".join(s["reason"] for s in record["dataset"]["skipped"])
    assert "duplicate path" in reasons and "not a number" in reasons
    assert record["dataset"]["values"]["count"] == 40


@slow
def test_evaluate_json_with_worst_residuals(trained, capsys):
    csv, run, _ = trained
    rc, out, err = cli(capsys, "evaluate", run, "--json", "--top-losses", "3")
    assert rc == 0, err
    report = json.loads(out)
    assert report["task"] == "regression" and {"mae", "rmse", "r2"} <= set(report)
    assert len(report["worst"]) == 3
    assert abs(report["worst"][0]["residual"]) >= abs(report["worst"][-1]["residual"])
    rc, out, err = cli(capsys, "evaluate", run / "checkpoint.pt", "--data", csv, "--json")
    assert rc == 0 and json.loads(out)["images"] == 40


@slow
def test_export_and_predict_give_the_value(trained, capsys, tmp_path):
    csv, run, _ = trained
    out = tmp_path / "exp"
    rc, stdout, err = cli(capsys, "export", run / "checkpoint.pt", "--format", "safetensors", "--format", "onnx",
                          "--out", out, "--json")
    assert rc == 0, err
    assert all(r["passed"] and r["compared"] == "values" for r in json.loads(stdout))
    card = json.loads((out / "checkpoint.onnx.card.json").read_text())
    assert card["task"] == "image regression" and card["task_fields"]["scale"] > 0
    image = csv.parent / "r2.png"
    values = []
    for model in (run / "checkpoint.pt", out / "checkpoint.onnx", out / "checkpoint.safetensors"):
        rc, stdout, err = cli(capsys, "predict", model, image, "--json")
        assert rc == 0, err
        answer = json.loads(stdout)[0]
        assert set(answer) == {"image", "task", "value"}
        values.append(answer["value"])
    assert values[1] == pytest.approx(values[0], abs=1e-3) and values[2] == pytest.approx(values[0], abs=1e-3)
    # de-standardised: the checkpoint's raw output times its scale plus its mean
    from engine.deploy.predict import load_classifier, preprocess

    classifier = load_classifier(run / "checkpoint.pt")
    with torch.no_grad():
        raw = float(classifier.model(preprocess([image], classifier.preprocessing))[0, 0])
    assert values[0] == pytest.approx(raw * classifier.task.scale + classifier.task.mean, abs=1e-4)


@slow
@pytest.mark.parametrize("argv", [
    ["explain", "{ckpt}", "{image}", "--out", "{tmp}"],
    ["evaluate", "{run}", "--unknown", "{tmp}"],
    ["export", "{ckpt}", "--format", "onnx", "--int8", "--out", "{tmp}"],
    ["suspects", "--data", "{csv}", "--model", "resnet18", "--weights", "none"],
    ["advise", "--data", "{csv}"],
    ["train", "--data", "{csv}", "--folds", "2", "--weights", "none", "--out", "{tmp}/folds"],
    ["gui", "--data", "{csv}"],
])
def test_unsupported_commands_refuse_in_one_line(trained, capsys, tmp_path, argv):
    csv, run, _ = trained
    values = {"ckpt": run / "checkpoint.pt", "run": run, "csv": csv, "image": csv.parent / "r1.png", "tmp": tmp_path}
    rc, _, err = cli(capsys, *[a.format(**values) for a in argv])
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "regression" in err


def test_task_flag_must_match_the_data(tmp_path, capsys):
    csv = _write_data(tmp_path, n=4)
    rc, _, err = cli(capsys, "train", "--data", csv, "--task", "multi-label", "--weights", "none", "--out", tmp_path / "r")
    assert rc == 2 and "needs a 'labels' column" in err
