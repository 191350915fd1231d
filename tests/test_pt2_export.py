"""`export --format pt2` (torch.export) behind the parity gate, and the trust check on loading it."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from app.cli import main
from engine.data.demo import write_demo_dataset
from engine.deploy.export import ParityError, export, load_any, parity_batch
from engine.deploy.predict import load_classifier
from engine.training.trainer import fit
from engine.deploy.trust import TRUST_FILE_ENV, UntrustedFileError, recorded_digests
from tests.helpers import make_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "shapes", classes=3, per_class=8, size=32, seed=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("run") / "run"
    fit(make_config(data, out, epochs=1))
    return out / "checkpoint.pt"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    path = tmp_path / "registry" / "trusted.json"
    monkeypatch.setenv(TRUST_FILE_ENV, str(path))
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("transfer-studio: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_pt2_passes_the_parity_gate_and_loads_in_a_fresh_interpreter(trained, registry, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", str(trained), "--format", "pt2", "--out", str(out), "--parity-images", "4", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["passed"] and report["format"] == "pt2" and report["images"] == 4
    assert report["max_abs_logit_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert json.loads((tmp_path / "model.pt2.parity.json").read_text())["passed"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() in recorded_digests()
    # Expected logits for a batch of 3 (neither the traced batch size nor 1), from the checkpoint.
    classifier = load_classifier(trained)
    batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = classifier.model(batch)
    torch.save({"batch": batch, "logits": expected}, tmp_path / "expected.pt")
    code = ("import json, sys, torch\nsys.modules['engine'] = None; sys.modules['app'] = None\n"
            "extra = {'transfer_studio.json': ''}\n"
            "model = torch.export.load('model.pt2', extra_files=extra).module()\n"
            "ref = torch.load('expected.pt', weights_only=True)\n"
            "with torch.no_grad():\n    got = model(ref['batch'])\n"
            "meta = json.loads(extra['transfer_studio.json'])\n"
            "print(json.dumps({'shape': list(got.shape), 'diff': float((got - ref['logits']).abs().max()),\n"
            "                  'classes': json.loads(meta['class_names']), 'crop': json.loads(meta['preprocessing'])['crop']}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 3] and result["diff"] <= 1e-4
    assert result["classes"] == classifier.class_names and result["crop"] == classifier.preprocessing.crop


@pytest.mark.slow
def test_the_export_dialogs_pt2_snippet_runs(trained, data, registry, tmp_path):
    from widgets.export_dialog import loading_snippet

    out = export(trained, "pt2", tmp_path / "model.pt2", parity_batch(trained, 2)).path
    classifier = load_classifier(trained)
    meta = {"arch": classifier.arch, "class_names": classifier.class_names,
            "preprocessing": classifier.preprocessing.to_dict()}
    (tmp_path / "image.jpg").write_bytes(next(data.glob("*/*.png")).read_bytes())  # PIL reads it by its content
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", loading_snippet("pt2", out, meta)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in classifier.class_names


@pytest.mark.slow
def test_an_unrecorded_pt2_is_refused_without_trust(trained, data, registry, tmp_path, monkeypatch, capsys):
    image = str(next(data.glob("*/*.png")))
    # Exported while the registry was elsewhere: this installation's registry never saw it.
    monkeypatch.setenv(TRUST_FILE_ENV, str(tmp_path / "elsewhere.json"))
    foreign = export(trained, "pt2", tmp_path / "foreign.pt2", parity_batch(trained, 2)).path
    monkeypatch.setenv(TRUST_FILE_ENV, str(registry))
    assert main(["predict", foreign, image]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not exported by this installation" in line and "--trust" in line
    assert main(["predict", foreign, image, "--trust", "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["top_k"][0]["class"] in load_classifier(trained).class_names

    # A recorded file whose bytes were changed afterwards (here: its class names) is no longer the file recorded.
    mine = tmp_path / "mine.pt2"
    export(trained, "pt2", mine, parity_batch(trained, 2))
    assert main(["predict", str(mine), image]) == 0
    capsys.readouterr()
    extra = {"transfer_studio.json": ""}
    program = torch.export.load(str(mine), extra_files=extra)
    meta = json.loads(extra["transfer_studio.json"])
    meta["class_names"] = json.dumps(["x", "y", "z"])
    changed = tmp_path / "changed.pt2"
    torch.export.save(program, str(changed), extra_files={"transfer_studio.json": json.dumps(meta)})
    with pytest.raises(UntrustedFileError):
        load_any(changed)
    # The window's Try an image loads through the same check (in a background task; its error is shown).
    from app.insight_session import LoadedModels, classify_image

    with pytest.raises(UntrustedFileError):
        classify_image(LoadedModels(), changed, image)
    answer, overlay, note = classify_image(LoadedModels(), mine, image)
    assert answer["top_k"][0]["class"] in load_classifier(trained).class_names
    assert overlay is None and "exported" in note
    assert main(["predict", str(changed), image]) == 2
    _one_error_line(capsys.readouterr().err)
    assert main(["predict", str(changed), image, "--trust", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top_k"][0]["class"] in ("x", "y", "z")


@pytest.mark.slow
def test_a_pt2_that_fails_the_parity_gate_is_not_trusted(trained, registry, tmp_path):
    out = tmp_path / "model.pt2"
    # A negative tolerance: no file can pass, so the gate fails after the file was written and loaded back.
    with pytest.raises(ParityError, match="differs from the model"):
        export(trained, "pt2", out, parity_batch(trained, 2), tolerance=-1.0)
    assert out.is_file() and not json.loads((tmp_path / "model.pt2.parity.json").read_text())["passed"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() not in recorded_digests()
    with pytest.raises(UntrustedFileError):
        load_any(out)
    # The same export past the gate is trusted.
    export(trained, "pt2", out, parity_batch(trained, 2))
    assert hashlib.sha256(out.read_bytes()).hexdigest() in recorded_digests()
    assert load_any(out).format == "pt2"


def test_an_architecture_torch_export_cannot_handle_is_one_line(trained, registry, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise RuntimeError("Dynamic control flow is not supported\nlong trace follows")

    monkeypatch.setattr(torch.export, "export", refuse)
    assert main(["export", str(trained), "--format", "pt2", "--out", str(tmp_path / "m.pt2"),
                 "--parity-images", "2"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "resnet18 cannot be exported to pt2" in line and "Dynamic control flow" in line
    assert not (tmp_path / "m.pt2").exists() and recorded_digests() == {}


def test_a_damaged_trusted_pt2_is_one_line(registry, tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip at all")
    assert main(["predict", str(bad), str(bad), "--trust"]) == 2
    assert "not a valid pt2 file" in _one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_hostile_trusted_pt2_is_one_line_without_torchs_logged_traceback(trained, registry, tmp_path, capsys):
    """A real archive whose sample inputs need a full unpickling: torch's deserializer logs a whole
    traceback while it falls back (issue 22, item 14); the command still says one line."""
    import io
    import zipfile

    good = tmp_path / "good.pt2"
    export(trained, "pt2", good, parity_batch(trained, 2))
    needs_pickle = io.BytesIO()
    torch.save(((frozenset({1}),), {}), needs_pickle)  # not a type weights_only loading allows
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, needs_pickle.getvalue() if "sample_inputs" in item.filename else data)
    capsys.readouterr()
    rc = main(["predict", str(bad), str(bad), "--trust"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Fallback to weights_only=False" not in err, err
    assert rc == 2 and _one_error_line(err)  # the model loads; the "image" given is then refused
