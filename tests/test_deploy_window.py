"""The window's side of deploying with evidence: the Export dialog's int8 ONNX behind its accuracy gate
(the command line's figures, in a child process), Insight's calibration (the temperature, ECE before
and after, the reliability diagram) and Try an image's calibrated probabilities and unknown verdict,
which agree with `predict --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.deploy.int8 import Int8Settings
from engine.insight.reliability import run_calibration
from engine.model.calibration import calibrated_probabilities, expected_calibration_error, reliability_bins
from engine.runs.run_folder import RunFolder
from tests.helpers import checkpoint, cli, export_that_knows_no_image, fragile_checkpoint  # noqa: F401 - fixtures
from widgets.export_dialog import ExportDialog, int8_line

META = {"arch": "resnet18", "class_names": ["a", "b"],
        "preprocessing": {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}


def ece_of(bins, images: int) -> float:
    """ECE summed from a diagram's bins, as a person reading it would."""
    return sum(b.count / images * abs(b.accuracy - b.confidence) for b in bins if b.count)


def test_the_diagrams_bins_are_what_ece_sums():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    logits = torch.randn(300, 4, generator=generator) * 4
    logits[torch.arange(300), labels] += 2
    probabilities = calibrated_probabilities(logits)
    bins = reliability_bins(probabilities, labels)
    assert len(bins) == 15 and sum(b.count for b in bins) == 300
    assert [b.upper for b in bins] == pytest.approx([(i + 1) / 15 for i in range(15)])
    assert all(b.lower < b.confidence <= b.upper for b in bins if b.count)
    assert ece_of(bins, 300) == pytest.approx(expected_calibration_error(probabilities, labels))


def test_the_export_dialog_asks_for_int8_only_with_onnx_and_shows_both_verdicts(qtbot, tmp_path):
    dialog = ExportDialog(str(tmp_path / "checkpoint.pt"), META, str(tmp_path))
    qtbot.addWidget(dialog)
    requests = []
    dialog.export_requested.connect(lambda *args: requests.append(args))
    assert dialog.max_drop.value() == 1.0 and dialog.calibration_images.value() == 300
    assert dialog.int8_settings() is None and not dialog.max_drop.isEnabled()
    dialog.int8_box.setChecked(True)
    dialog.max_drop.setValue(0.5)
    dialog.calibration_images.setValue(40)
    dialog.boxes["onnx"].setChecked(False)  # int8 quantizes the ONNX file: nothing to quantize
    assert not dialog.int8_box.isEnabled() and dialog.int8_settings() is None
    dialog.boxes["onnx"].setChecked(True)
    dialog.run_button.click()
    assert requests == [(str(tmp_path), ["pt", "onnx"], Int8Settings(0.5, 40))]
    assert "int8" in dialog.results.text()

    kept = {"format": "onnx-int8", "path": str(tmp_path / "checkpoint.int8.onnx"), "images": 6,
            "fp32_accuracy": 1.0, "int8_accuracy": 0.8333, "accuracy_drop": 16.67, "max_drop": 20.0,
            "speedup": 1.7, "excluded_nodes": ["/fc/Gemm"], "passed": True}
    assert int8_line(kept).startswith("✔ checkpoint.int8.onnx") and "1.70×" in int8_line(kept)
    assert "16.67 points" in int8_line(kept) and "left in fp32: /fc/Gemm" in int8_line(kept)
    refused = {**kept, "max_drop": 0.0, "speedup": None, "excluded_nodes": [], "passed": False}
    line = int8_line(refused)
    assert line.startswith("✘ int8 refused") and "16.67 points" in line and "not kept" in line and "\n" not in line


# --- with a trained run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_insight_shows_the_runs_calibration_as_run_json_records_it(window, checkpoint, qtbot):
    folder = RunFolder(checkpoint.parent)
    recorded = json.loads(folder.record_path.read_text())["calibration"]
    with qtbot.waitSignal(window.session.insight.insight_ready, timeout=30_000) as ready:
        window.session.insight.open_insight(folder)
    view = window.insight.reliability
    text = view.summary.text()
    assert f"{recorded['ece_before']:.2%} before → {recorded['ece_after']:.2%} after" in text, text
    assert f"Temperature {recorded['temperature']:.3g}" in text and "15 bins" in text
    assert recorded["unknown"]["score"] in text
    # The diagram's bins give back run.json's ECE figures: the temperature was applied to the "after" ones.
    calibration = ready.args[0].calibration
    assert ece_of(calibration.before, calibration.images) == pytest.approx(recorded["ece_before"], abs=1e-6)
    assert ece_of(calibration.after, calibration.images) == pytest.approx(recorded["ece_after"], abs=1e-6)
    drawn = view.curve_points()
    assert drawn["after"][0] == pytest.approx([b.confidence for b in calibration.after if b.count])
    assert len(drawn["before"][0]) == sum(1 for b in calibration.before if b.count) > 0


@pytest.mark.slow
def test_a_run_without_its_validation_logits_shows_why_in_one_line(checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(checkpoint.parent, copy)
    (copy / "val_logits.pt").unlink()
    from engine.errors import UserError

    with pytest.raises(UserError) as why:
        run_calibration(RunFolder(copy))
    assert "\n" not in str(why.value) and "val_logits.pt" in str(why.value)


@pytest.mark.slow
def test_try_an_image_shows_predicts_calibrated_probabilities_and_the_raw_ones_on_request(window, checkpoint, qtbot,
                                                                                            capsys):
    image = next((checkpoint.parent.parent / "D").rglob("*.png"))
    _, out, _ = cli(capsys, "predict", checkpoint, image, "--json")
    _, out_raw, _ = cli(capsys, "predict", checkpoint, image, "--json", "--raw")
    (predicted,), (raw,) = json.loads(out), json.loads(out_raw)
    assert predicted["calibrated"]
    window.session.insight.set_try_model(str(checkpoint))
    with qtbot.waitSignal(window.session.insight.prediction_ready, timeout=30_000) as shown:
        window.insight.try_image_requested.emit(str(image))
    answer = shown.args[1]
    assert {k: v for k, v in answer.items() if k != "raw_top_k"} == {k: v for k, v in predicted.items() if k != "image"}
    panel = window.insight.try_panel
    assert panel.bars.top() == [(t["class"], t["probability"]) for t in predicted["top_k"]]
    assert "calibrated" in panel.message.text()
    panel.raw_check.setChecked(True)
    assert panel.bars.top() == [(t["class"], t["probability"]) for t in raw["top_k"]]
    assert "raw" in panel.message.text()
    panel.raw_check.setChecked(False)
    assert panel.bars.top()[0] == (predicted["top_k"][0]["class"], predicted["top_k"][0]["probability"])


@pytest.mark.slow
def test_try_an_image_says_none_of_the_classes_below_the_unknown_threshold(window, checkpoint, qtbot, tmp_path, capsys):
    """predict's own trick: an exported copy whose card sets a threshold no image reaches."""
    image = next((checkpoint.parent.parent / "D").rglob("*.png"))
    exported = export_that_knows_no_image(checkpoint, tmp_path)
    _, out, _ = cli(capsys, "predict", exported, image, "--json")
    (predicted,) = json.loads(out)
    window.session.insight.set_try_model(str(exported))
    with qtbot.waitSignal(window.session.insight.prediction_ready, timeout=30_000):
        window.insight.try_image_requested.emit(str(image))
    message = window.insight.try_panel.message.text()
    assert predicted["unknown"] is True
    assert f"{image.name}: none of the classes (score {predicted['score']['value']:.4g} < 1e+09" in message, message


# --- int8 through the dialog, in the child process ---------------------------------------------------


def _dialog_exporting(qtbot, run_folder: Path, formats_folder: Path):
    """The Export dialog wired to an export controller as the window wires them."""
    from app.export_controller import ExportController
    from app.session_state import Messages, RunState, ShownRun

    messages = Messages()
    shown = ShownRun(messages)
    shown.set(RunState(folder=RunFolder(run_folder)))
    exports = ExportController(shown, messages)
    checkpoint_path, meta = exports.offer()
    dialog = ExportDialog(str(checkpoint_path), meta, str(formats_folder))
    qtbot.addWidget(dialog)
    dialog.export_requested.connect(exports.start)
    exports.finished.connect(lambda folder, reports: dialog.show_reports(reports))
    exports.failed.connect(dialog.show_error)
    for fmt, box in dialog.boxes.items():
        box.setChecked(fmt == "onnx")
    dialog.int8_box.setChecked(True)
    dialog.calibration_images.setValue(16)
    return dialog, exports


@pytest.mark.slow
def test_the_dialogs_int8_export_is_kept_with_the_command_lines_figures(checkpoint, qtbot, tmp_path):
    pytest.importorskip("onnxruntime")
    dialog, exports = _dialog_exporting(qtbot, checkpoint.parent, tmp_path)
    reports = []
    exports.finished.connect(lambda folder, done: reports.extend(done))
    try:
        with qtbot.waitSignal(exports.finished, timeout=180_000):
            dialog.run_button.click()
    finally:
        exports.shutdown()
    int8 = next(r for r in reports if r["format"] == "onnx-int8")
    assert int8["passed"] and Path(int8["path"]).is_file() and int8["calibration_images"] == 16
    lines = dialog.results.text().splitlines()
    assert lines[0].startswith("✔ checkpoint.onnx") and lines[1] == int8_line(int8)
    assert f"{int8['fp32_accuracy']:.1%}" in lines[1] and f"{int8['speedup']:.2f}×" in lines[1]


PATCHED_EXPORT = ("import sys, engine.deploy.int8 as int8; int8.sensitive_nodes = lambda path: []; "
                  "from app.cli import run; run(sys.argv[1:])")


@pytest.mark.slow
def test_the_dialogs_int8_export_is_refused_in_one_line_when_max_drop_0_meets_a_real_drop(checkpoint, qtbot,
                                                                                             tmp_path, monkeypatch):
    """test_int8_export's fragile model (a real int8 drop) and its trick (no fp32 retry), in the child."""
    pytest.importorskip("onnxruntime")
    import app.worker

    run = tmp_path / "fragile"
    run.mkdir()
    (run / "run.json").write_bytes((checkpoint.parent / "run.json").read_bytes())  # the dialog's snippet reads it
    fragile_checkpoint(checkpoint, run / "checkpoint.pt")
    plain = app.worker.export_arguments
    monkeypatch.setattr(app.worker, "export_arguments", lambda *args: ["-c", PATCHED_EXPORT, *plain(*args)[2:],
                                                                       "--tolerance", "1e-2"])
    dialog, exports = _dialog_exporting(qtbot, run, tmp_path / "out")
    dialog.max_drop.setValue(0)
    try:
        with qtbot.waitSignal(exports.finished, timeout=180_000) as done:
            dialog.run_button.click()
    finally:
        exports.shutdown()
    refused = next(r for r in done.args[1] if r["format"] == "onnx-int8")
    assert not refused["passed"] and refused["accuracy_drop"] > 0 and refused["speedup"] is None
    lines = dialog.results.text().splitlines()
    assert lines[0].startswith("✔ checkpoint.onnx") and lines[1] == int8_line(refused), lines
    assert lines[1].startswith("✘ int8 refused") and "--max-drop" not in lines[1] and len(lines) == 2
    assert not (tmp_path / "out" / "checkpoint.int8.onnx").exists() and (tmp_path / "out" / "checkpoint.onnx").is_file()
