"""Export with a parity gate, predict from every format, resume, safe loading everywhere."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from app.cli import main
from engine.config import PlanConfig, RunConfig
from engine.errors import UnsafeFileError
from engine.events import Callbacks, TrainingControl
from engine.deploy.export import FORMATS, ParityError, export, load_any, parity_batch
from engine.training.trainer import fit
from tests.conftest import ROOT
from tests.helpers import make_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir):
    out = tmp_path_factory.mktemp("run") / "run"
    fit(make_config(demo_dir, out, epochs=1))
    return out / "checkpoint.pt"


@pytest.mark.slow
def test_all_formats_pass_the_parity_gate_and_load_in_their_runtimes(trained, tmp_path, demo_dir):
    batch = parity_batch(trained, limit=8)
    assert batch.shape[0] == 8  # validation images of the run's own dataset
    for fmt in FORMATS:
        report = export(trained, fmt, tmp_path / f"m{'.pt' if fmt == 'pt' else ''}" if fmt == "pt" else None, batch)
        assert report.passed and report.top1_agreement == 1.0 and report.max_abs_logit_diff <= 1e-4
        saved = json.loads(open(report.path + ".parity.json").read())
        assert saved["passed"] and saved["images"] == 8
    reference = torch.load(trained, weights_only=True)
    model = torchvision.models.resnet18(num_classes=4)
    model.load_state_dict(load_file(str(trained.with_name("checkpoint.safetensors"))), strict=True)
    sidecar = json.loads(trained.with_name("checkpoint.json").read_text())
    assert sidecar["class_names"] == reference["class_names"] and sidecar["arch"] == "resnet18"
    import onnx
    import onnxruntime

    onnx_model = onnx.load(str(trained.with_name("checkpoint.onnx")))
    assert onnx_model.opset_import[0].version >= 17
    props = {p.key: p.value for p in onnx_model.metadata_props}
    assert json.loads(props["class_names"]) == reference["class_names"] and "preprocessing" in props
    session = onnxruntime.InferenceSession(str(trained.with_name("checkpoint.onnx")))
    model.eval()
    with torch.no_grad():
        expected = model(batch[:3]).numpy()
    got = session.run(None, {"input": batch[:3].numpy()})[0]  # a batch size other than the traced one
    assert abs(got - expected).max() <= 1e-4


@pytest.mark.slow
def test_torchscript_runs_without_this_project(trained, tmp_path):
    path = export(trained, "torchscript", tmp_path / "m.torchscript.pt", parity_batch(trained, 4)).path
    code = ("import sys, torch; sys.modules['engine'] = None; sys.modules['app'] = None\n"
            f"m = torch.jit.load({path!r}); print(tuple(m(torch.zeros(2, 3, 32, 32)).shape))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "(2, 4)", out.stderr


def test_parity_gate_fails_loudly(trained, tmp_path, monkeypatch):
    import engine.deploy.export as ex

    original = ex.load_any

    def skewed(path, fmt=None):
        loaded = original(path, fmt)
        run = loaded._run
        loaded._run = lambda batch: run(batch) + 1e-2
        return loaded

    monkeypatch.setattr(ex, "load_any", skewed)
    with pytest.raises(ParityError, match="largest logit difference"):
        export(trained, "safetensors", tmp_path / "bad.safetensors", parity_batch(trained, 4))
    assert not json.loads((tmp_path / "bad.safetensors.parity.json").read_text())["passed"]


@pytest.mark.slow
def test_predict_top1_agrees_across_formats(trained, tmp_path, demo_dir, capsys):
    assert main(["export", str(trained), "--out", str(tmp_path / "exports"), "--json"]) == 0
    paths = [p["path"] for p in json.loads(capsys.readouterr().out)]
    assert len(paths) == 4
    images = [str(p) for p in sorted((demo_dir / "square").glob("*.png"))[:3]]
    answers = []
    for path in [str(trained)] + paths:
        assert main(["predict", path, *images, "--top-k", "3", "--json"]) == 0
        answers.append([r["top_k"][0]["class"] for r in json.loads(capsys.readouterr().out)])
    assert all(a == answers[0] for a in answers)


@pytest.mark.slow
def test_resume_continues_numbering_and_matches_the_uninterrupted_run(demo_dir, tmp_path):
    plan = PlanConfig(strategy="gradual")  # also exercises groups added mid-run
    fit(make_config(demo_dir, tmp_path / "whole", epochs=3, plan=plan, augment="standard"))

    control = TrainingControl()

    class StopInEpochThree(Callbacks):
        def on_batch_end(self, event):
            if event.epoch == 3:
                control.stop()

    interrupted = fit(make_config(demo_dir, tmp_path / "cut", epochs=3, plan=plan, augment="standard",
                                  max_batch_events_per_second=1e6), StopInEpochThree(), control)
    assert interrupted.stopped == "user" and interrupted.epochs_run == 2
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    whole = torch.load(tmp_path / "whole" / "resume.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "resume.pt", weights_only=True)
    assert whole["epoch"] == resumed["epoch"] == 3
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_by_predict_export_and_resume(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format_version": 1, "model": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError):
        load_any(tmp_path / "evil.pt")
    (tmp_path / "run").mkdir()
    torch.save({"epoch": Exploit()}, tmp_path / "run" / "resume.pt")
    config = RunConfig(out_dir=str(tmp_path / "run"))
    (tmp_path / "run" / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    for args in (["predict", str(tmp_path / "evil.pt"), "x.png"], ["export", str(tmp_path / "evil.pt")],
                 ["train", "--resume", str(tmp_path / "run")]):
        proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and "arbitrary code" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
