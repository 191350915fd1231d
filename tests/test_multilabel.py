"""Multi-label (issue 25): metrics against hand-computed values, one trained run reused for training
records, evaluate, export with the parity gate, predict and the one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from engine.runs.val_logits import read_val_outputs
from engine.training.task_metrics import average_precision, f1_scores, mean_average_precision, tune_thresholds
from engine.training.tasks import decide_pos_weight
from engine.training.trainer import fit
from tests.helpers import cli, make_config


def test_average_precision_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # ranks 1 and 3 positive: (1/2)*1 + (1/2)*(2/3)
    assert average_precision(scores, torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(scores, torch.tensor([0, 0, 0, 0])) is None
    # ties share one threshold (sklearn): both at 0.5 -> precision 1/2 at recall 1
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    mean_ap, per_label = mean_average_precision(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1, 0], [0, 0]]))
    assert per_label == [1.0, None] and mean_ap == 1.0


def test_f1_and_tuned_thresholds_by_hand():
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.1, 0.9]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]])
    f1 = f1_scores(probs, targets, torch.tensor([0.5, 0.5]))
    # label 0: tp 1 (0.9), fp 1 (0.6), fn 1 (0.3) -> P = R = F1 = 0.5; label 1: tp 2, fp 0, fn 0 -> 1.0
    assert f1["f1"] == pytest.approx([0.5, 1.0]) and f1["macro_f1"] == pytest.approx(0.75)
    assert f1["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    assert f1["support"] == [2, 2]
    # label 0: at 0.3 all three highest are predicted: tp 2, fp 1 -> F1 0.8 (the best); label 1: 0.7
    assert tune_thresholds(probs, targets) == pytest.approx([0.3, 0.7])
    assert tune_thresholds(probs, torch.zeros(4, 2)) == [0.5, 0.5]


def test_pos_weight_follows_the_class_weight_rule():
    names = ["common", "rare"]
    weights, note = decide_pos_weight("auto", torch.tensor([10.0, 2.0]), 20, names)
    assert weights == [1.0, 9.0] and "rare 9.00" in note  # 18 negatives / 2 positives, >= 3x
    assert decide_pos_weight("auto", torch.tensor([10.0, 8.0]), 20, names)[0] is None
    assert decide_pos_weight("balanced", torch.tensor([10.0, 8.0]), 20, names)[0] == [1.0, 1.5]
    assert decide_pos_weight("none", torch.tensor([10.0, 2.0]), 20, names)[0] is None


def _write_data(folder, n=40):
    """A red square (label red) and a blue square (label blue), each present or not: 0, 1 or 2 labels."""
    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    for i in range(n):
        img = (rng.random((32, 32, 3)) * 60).astype("uint8")
        labels = []
        if i % 2:
            img[3:14, 3:14, 0] = 255
            labels.append("red")
        if i % 3 == 0:
            img[18:29, 18:29, 2] = 255
            labels.append("blue")
        Image.fromarray(img).save(folder / f"m{i}.png")
        rows.append(f"m{i}.png,{' '.join(labels)}")
    rows.append("gone.png,red")  # a bad row: kept out, listed
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


# The tests below share one trained run (about 5-20 s to make on 2 busy cores): the slow tier.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One multi-label run (frozen random trunk, head on cached features), reused by the module."""
    folder = tmp_path_factory.mktemp("multilabel")
    csv = _write_data(folder)
    from engine.config import PlanConfig

    config = make_config(csv, folder / "run", epochs=3, augment="none",
                         plan=PlanConfig(strategy="feature-extraction", base_lr=0.01))
    result = fit(config)
    return csv, folder / "run", result


@slow
def test_training_records_the_task(trained):
    csv, run, result = trained
    assert result.task == "multi-label" and result.best_epoch is not None
    assert set(result.best_val_metrics) == {"mAP", "macro_f1", "micro_f1"}
    assert any("gone.png" in s.path for s in result.skipped) or json.loads((run / "run.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(line["task"] == "multi-label" and "val_mAP" in line for line in lines)
    assert lines[0]["val_accuracy"] is None and 0 <= lines[0]["train_accuracy"] <= 1
    assert all(line["integrity"]["changed"] == [] for line in lines)  # the freeze proof holds
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["task"]["name"] == "multi-label" and len(checkpoint["task"]["thresholds"]) == 2
    assert checkpoint["class_names"] == ["blue", "red"]
    saved = read_val_outputs(run / "val_outputs.pt")
    assert saved.outputs.shape == (len(saved.paths), 2) and saved.targets.shape == saved.outputs.shape
    assert not (run / "val_predictions.csv").exists() and not (run / "val_logits.pt").exists()


@slow
def test_evaluate_json(trained, capsys):
    csv, run, _ = trained
    rc, out, err = cli(capsys, "evaluate", run, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["task"] == "multi-label" and {"mAP", "macro_f1", "micro_f1", "per_label"} <= set(report)
    assert set(report["per_label"]["red"]) == {"precision", "recall", "f1", "ap", "threshold", "support"}
    rc, out, err = cli(capsys, "evaluate", run / "checkpoint.pt", "--data", csv, "--json")
    assert rc == 0, err
    assert json.loads(out)["images"] == 40


@pytest.mark.slow
def test_export_every_format_and_predict(trained, capsys, tmp_path):
    _, run, _ = trained
    out = tmp_path / "exp"
    rc, stdout, err = cli(capsys, "export", run / "checkpoint.pt", "--format", "pt", "--format", "safetensors",
                          "--format", "torchscript", "--format", "onnx", "--format", "pt2", "--out", out, "--json")
    assert rc == 0, err
    reports = json.loads(stdout)
    assert all(r["passed"] and r["compared"] == "probabilities" for r in reports)
    card = json.loads((out / "checkpoint.onnx.card.json").read_text())
    assert card["task"] == "multi-label image classification" and len(card["task_fields"]["thresholds"]) == 2
    image = trained[0].parent / "m1.png"
    answers = []
    for name in ("checkpoint.onnx", "checkpoint.safetensors", "checkpoint.torchscript.pt", "checkpoint.pt2"):
        rc, stdout, err = cli(capsys, "predict", out / name, image, "--json")
        assert rc == 0, err
        answers.append(json.loads(stdout)[0])
    assert set(answers[0]) == {"image", "task", "labels", "probabilities"}
    assert all(a["labels"] == answers[0]["labels"] for a in answers)
    assert all(a["probabilities"]["red"] == pytest.approx(answers[0]["probabilities"]["red"], abs=1e-5) for a in answers)


@slow
def test_predict_checkpoint(trained, capsys):
    csv, run, _ = trained
    rc, out, err = cli(capsys, "predict", run / "checkpoint.pt", csv.parent / "m1.png", "--json")
    assert rc == 0, err
    answer = json.loads(out)[0]
    assert answer["task"] == "multi-label" and set(answer["probabilities"]) == {"blue", "red"}
    rc, out, err = cli(capsys, "predict", run / "checkpoint.pt", csv.parent / "m1.png", "--json", "--tta")
    mirrored = json.loads(out)[0]
    assert rc == 0 and mirrored["tta"] == ["as is", "mirrored"] and set(mirrored["probabilities"]) == {"blue", "red"}


@slow
def test_resume_continues(trained, tmp_path):
    csv, run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    from dataclasses import replace

    from engine.runs.run_folder import RunFolder

    config = RunFolder(copy).load_config()
    result = fit(replace(config, out_dir=str(copy), train=replace(config.train, epochs=4)), resume=True)
    assert result.epochs_run == 4 and result.task == "multi-label"


@slow
@pytest.mark.parametrize("argv", [
    ["explain", "{ckpt}", "{image}", "--out", "{tmp}"],
    ["evaluate", "{run}", "--unknown", "{tmp}"],
    ["evaluate", "{run}", "--tta"],
    ["export", "{ckpt}", "--format", "onnx", "--int8", "--out", "{tmp}"],
    ["predict", "{ckpt}", "{image}", "--raw"],
    ["suspects", "--data", "{csv}", "--model", "resnet18", "--weights", "none"],
    ["advise", "--data", "{csv}"],
    ["train", "--data", "{csv}", "--folds", "2", "--weights", "none", "--out", "{tmp}/folds"],
    ["train", "--data", "{csv}", "--label-smoothing", "0.1", "--weights", "none", "--out", "{tmp}/ls"],
    ["train", "--data", "{csv}", "--model", "squeezenet1_0", "--weights", "none", "--out", "{tmp}/sq"],
    ["gui", "--data", "{csv}"],
])
def test_unsupported_commands_refuse_in_one_line(trained, capsys, tmp_path, argv):
    csv, run, _ = trained
    values = {"ckpt": run / "checkpoint.pt", "run": run, "csv": csv, "image": csv.parent / "m1.png", "tmp": tmp_path}
    rc, _, err = cli(capsys, *[a.format(**values) for a in argv])
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "multi-label" in err
