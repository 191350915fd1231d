"""The transfer-studio command: the must-show outputs and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from app.cli import main
from tests.conftest import ROOT

RECIPE = ["--lr", "conv1=1e-5", "--lr", "layer1=1e-5", "--lr", "layer2=5e-5", "--lr", "layer3=1e-4",
          "--lr", "layer4=5e-4", "--lr", "fc=1e-3"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_layers_feature_extraction_json(capsys):
    code, out, _ = run_cli(capsys, "layers", "--model", "resnet18", "--classes", "10", "--weights", "none",
                           "--strategy", "feature-extraction", "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["trainable_params"], report["total_params"]) == (5130, 11_181_642)
    assert [p["name"] for p in report["parameters"] if p["trainable"]] == ["fc.weight", "fc.bias"]
    assert set(report["modules"][0]) >= {"name", "type", "params", "trainable_params", "frozen", "lr"}
    assert all(set(g) >= {"lr", "weight_decay", "params"} for g in report["param_groups"])


def test_layers_reference_recipe_json(capsys):
    code, out, _ = run_cli(capsys, "layers", "--model", "resnet18", "--classes", "10", "--weights", "none",
                           "--base-lr", "2e-4", *RECIPE, "--json")
    report = json.loads(out)
    lr_of = {p["name"]: p["lr"] for p in report["parameters"]}
    expected = {"conv1": 1e-5, "layer1": 1e-5, "layer2": 5e-5, "layer3": 1e-4, "layer4": 5e-4, "fc": 1e-3}
    for name, lr in lr_of.items():
        module = name.split(".")[0]
        assert lr == expected.get(module, 2e-4), name
    assert lr_of["bn1.weight"] == 2e-4
    groups = report["param_groups"]
    assert len(groups) == len({g["lr"] for g in groups}) == 6
    names = [n for g in groups for n in g["params"]]
    assert sorted(names) == sorted(lr_of)


def test_layers_text_shows_the_summary(capsys):
    code, out, _ = run_cli(capsys, "layers", "--model", "resnet18", "--classes", "10", "--weights", "none",
                           "--strategy", "feature-extraction", "--depth", "1")
    assert code == 0 and "Trainable 5,130 / 11,181,642 (0.05 %) · 1 LR group" in out and "layer4" in out


@pytest.mark.slow
def test_demo_data_train_predict(tmp_path, capsys):
    assert run_cli(capsys, "demo-data", str(tmp_path / "d"), "--classes", "3", "--per-class", "10", "--size", "48")[0] == 0
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "d"), "--model", "resnet18", "--weights", "none",
                             "--epochs", "2", "--image-size", "64", "--batch-size", "8", "--device", "cpu",
                             "--out", str(tmp_path / "run"), "--json", *RECIPE)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 2 and summary["checkpoint"].endswith("checkpoint.pt")
    assert {"best_val_accuracy", "seconds", "images_per_second", "skipped"} <= set(summary)
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(torch.load(summary["checkpoint"], weights_only=True)["model"], strict=True)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    image = next((tmp_path / "d" / "triangle").glob("*.png"))
    code, out, _ = run_cli(capsys, "predict", summary["checkpoint"], str(image), "--top-k", "2", "--json")
    ranked = json.loads(out)[0]["top_k"]
    assert code == 0 and len(ranked) == 2 and ranked[0]["probability"] >= ranked[1]["probability"]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["layers", "--model", "resnet19", "--classes", "3", "--weights", "none"], "unknown architecture 'resnet19'"),
    (["layers", "--model", "resnet18", "--classes", "3", "--weights", "none", "--freeze", "layer7"], "no module named 'layer7'"),
    (["layers", "--model", "resnet18", "--classes", "3", "--weights", "none", "--lr", "fc=0"], "must be > 0"),
    (["layers", "--model", "resnet18", "--classes", "3", "--weights", "none", "--lr", "fc=-1e-3"], "must be > 0"),
    (["layers", "--model", "resnet18", "--classes", "3", "--weights", "none", "--base-lr", "0"], "must be > 0"),
    (["train", "--data", "/nonexistent/folder", "--weights", "none", "--out", "/tmp/x"], "dataset folder not found"),
    (["train", "--data", "ONE_CLASS", "--weights", "none", "--out", "/tmp/x"], "at least 2 class"),
    (["predict", "/nonexistent.pt", "x.png"], "file not found"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, args, message):
    (tmp_path / "one" / "only").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "a.png")
    args = [str(tmp_path / "one") if a == "ONE_CLASS" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_train_exits_without_the_interpreter_teardown_other_commands_normally(monkeypatch, capsys):
    import app.cli as cli

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli, "main", lambda argv: print("last line", end="") or 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        cli.run(["train", "--epochs", "1"])
    assert exits == [3] and capsys.readouterr().out == "last line"  # flushed before leaving
    with pytest.raises(SystemExit) as normal:
        cli.run(["layers", "resnet18"])
    assert normal.value.code == 3 and exits == [3]
