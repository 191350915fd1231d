"""Issue 21's smaller window items: status texts, Apple's GPU, export folders, bad project files,
undo, and the window's own words (never the command line's)."""

from __future__ import annotations

from pathlib import Path

import pytest


from engine.config import DataConfig, ModelConfig, RunConfig, save_project
from engine.data.demo import write_demo_dataset
from engine.events import BatchEvent, RunStarted
from widgets.training_panel import TrainingPanel
from tests.gui_helpers import choose


def run_started(run_dir: str, precision: str) -> RunStarted:
    return RunStarted(run_dir=run_dir, device="cpu", device_name="CPU", precision=precision, class_names=("a", "b"),
                      train_images=8, val_images=2, trainable_params=10, total_params=10, feature_cache="")


def batch(step: int = 1) -> BatchEvent:
    return BatchEvent(epoch=1, epochs=2, step=step, steps=4, global_step=step, total_steps=8, loss=1.0, lrs={},
                      images_per_second=123.0, eta_seconds=42.0)


# --- item 21: status texts -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_precision_keeps_its_name_once_the_run_starts(qtbot, window, tmp_path):
    choose(window.training_panel.precision_combo, "bf16")
    assert window.precision_label.text() == "Mixed precision: bf16"
    window.controller.run_started.emit(run_started(str(tmp_path / "run"), "bfloat16"))  # the engine's dtype name
    assert window.precision_label.text() == "Mixed precision: bf16"
    window.controller.run_started.emit(run_started(str(tmp_path / "run"), "fp32"))
    assert window.precision_label.text() == "Mixed precision: off"


def test_a_paused_run_shows_no_eta(qtbot):
    panel = TrainingPanel([("CPU", "cpu", 1)])
    qtbot.addWidget(panel)
    panel.set_run_controls(running=True, can_export=False)
    panel.show_batch(batch())
    assert "ETA" in panel.rate_label.text()
    panel.show_paused(True)
    assert "ETA" not in panel.rate_label.text() and "paused" in panel.rate_label.text()
    panel.show_batch(batch(2))  # the batch in flight when Pause was pressed
    assert "ETA" not in panel.rate_label.text()
    panel.show_paused(False)
    assert "ETA" in panel.rate_label.text()


def test_a_stopped_run_shows_no_rate(qtbot):
    panel = TrainingPanel([("CPU", "cpu", 1)])
    qtbot.addWidget(panel)
    panel.show_batch(batch())
    assert "images/s" in panel.rate_label.text()
    panel.show_finished("Stopped after 1 epoch(s)")
    assert "images/s" not in panel.rate_label.text() and "ETA" not in panel.rate_label.text()


@pytest.mark.slow
def test_a_weights_note_counts_the_classes_of_the_folder_opened(qtbot, window, tmp_path, resnet18_weights_file):
    """A project (or the run shown after a restart) names an 8-class folder: the note on the weights
    file's new head says 8, not the 2 assumed while the folder was being listed."""
    folder = write_demo_dataset(tmp_path / "eight", classes=8, per_class=3, size=32, seed=0)
    project = tmp_path / "eight.tsproj.json"
    save_project(project, RunConfig(data=DataConfig(root=str(folder), image_size=32),
                                    model=ModelConfig(arch="resnet18", weights=str(resnet18_weights_file))))
    notices = []
    window.session.messages.notice.connect(notices.append)
    window.open_project(str(project))
    qtbot.waitUntil(lambda: any("new fc" in n for n in notices), timeout=60_000)
    note = next(n for n in notices if "new fc" in n)
    assert "for 8 classes" in note, note
    assert window.model_panel.weights_combo.currentData() == str(resnet18_weights_file)


# --- item 23: Apple's GPU ----------------------------------------------------------------------------


def test_the_device_box_offers_apples_gpu_where_torch_has_it(qtbot, monkeypatch):
    import torch
    from PySide6.QtCore import Qt

    from app.session_devices import available_devices, device_status
    from engine.model.devices import select_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    entries = [entry for entry in available_devices() if entry[1] == "mps"]
    assert len(entries) == 1 and entries[0][2] == 1 and "CPU" in entries[0][3]  # what stays on the CPU, said
    panel = TrainingPanel(available_devices())
    qtbot.addWidget(panel)
    index = panel.device_combo.findData("mps")
    assert index >= 0
    assert "export" in panel.device_combo.itemData(index, Qt.ItemDataRole.ToolTipRole)
    assert select_device("mps") == torch.device("mps")
    assert device_status("mps", "auto", 1) == ("Device: Apple GPU (mps)", "Mixed precision: off")


def test_apples_gpu_is_refused_in_one_line_where_torch_has_none(monkeypatch):
    import pytest
    import torch

    from app.session_devices import available_devices
    from engine.errors import UserError
    from engine.model.devices import select_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert all(entry[1] != "mps" for entry in available_devices())
    with pytest.raises(UserError) as refused:
        select_device("mps")
    assert "\n" not in str(refused.value) and "mps" in str(refused.value)


# --- item 22: export folders ------------------------------------------------------------------------


def _exports_with_a_checkpoint(qtbot, tmp_path, monkeypatch):
    """An export controller whose shown run has a checkpoint; the export process only records its folder."""
    from app.export_controller import ExportController
    from app.session_state import Messages, RunState, ShownRun
    from app.worker import ExportProcess
    from engine.runs.run_folder import RunFolder

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    messages = Messages()
    shown = ShownRun(messages)
    shown.set(RunState(folder=RunFolder(run)))
    started = []
    monkeypatch.setattr(ExportProcess, "start", lambda self, checkpoint, folder, formats, int8: started.append(folder))
    exports = ExportController(shown, messages)
    failures = []
    exports.failed.connect(failures.append)
    return exports, started, failures


def test_export_creates_the_folder_typed(qtbot, tmp_path, monkeypatch):
    exports, started, failures = _exports_with_a_checkpoint(qtbot, tmp_path, monkeypatch)
    exports.start(str(tmp_path / "exports"), ["pt"])
    assert failures == [] and (tmp_path / "exports").is_dir() and started == [tmp_path / "exports"]


def test_export_makes_no_tree_of_folders_for_a_mistyped_path(qtbot, tmp_path, monkeypatch):
    exports, started, failures = _exports_with_a_checkpoint(qtbot, tmp_path, monkeypatch)
    exports.start(str(tmp_path / "typo" / "exports"), ["pt"])
    assert started == [] and not (tmp_path / "typo").exists()
    assert len(failures) == 1 and "\n" not in failures[0] and "exists" in failures[0]
    exports.start("exports", ["pt"])  # relative to wherever the program started: refused
    assert started == [] and "full path" in failures[-1]


def test_the_export_snippet_follows_the_folder_typed(qtbot, tmp_path):
    from widgets.export_dialog import ExportDialog

    meta = {"arch": "resnet18", "class_names": ["a", "b"],
            "preprocessing": {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    dialog = ExportDialog(str(tmp_path / "run" / "checkpoint.pt"), meta, str(tmp_path / "run"))
    qtbot.addWidget(dialog)
    assert str(tmp_path / "run" / "checkpoint") in dialog.snippet.toPlainText()
    dialog.folder_edit.setText(str(tmp_path / "elsewhere"))
    assert str(tmp_path / "elsewhere" / "checkpoint") in dialog.snippet.toPlainText()
    assert str(tmp_path / "run" / "checkpoint") not in dialog.snippet.toPlainText()


def test_the_cluster_dialog_writes_nothing_into_a_folder_that_does_not_exist(qtbot, tmp_path):
    from widgets.cluster_dialog import ClusterDialog

    config = RunConfig(data=DataConfig(root=str(tmp_path / "data")))
    saved = []
    dialog = ClusterDialog(str(tmp_path / "tpyo" / "deep" / "job.tsproj.json"),
                           lambda path: (saved.append(path), save_project(path, config)), config=lambda: config)
    qtbot.addWidget(dialog)
    dialog.write_button.click()
    text = dialog.result.text()
    assert text.startswith("✘") and "does not exist" in text and "\n" not in text
    assert saved == [] and not (tmp_path / "tpyo").exists()


# --- item 20: a project's layer edits that its model lacks ---------------------------------------------


def _project_with_edits(path: Path, arch: str, module: str, root: str = "", epochs: int = 77) -> Path:
    from engine.config import PlanConfig, PlanEdit, TrainConfig

    save_project(path, RunConfig(data=DataConfig(root=root), model=ModelConfig(arch=arch, weights="none"),
                                 plan=PlanConfig(edits=(PlanEdit(module, frozen=True),)),
                                 train=TrainConfig(epochs=epochs)))
    return path


@pytest.mark.slow
def test_a_project_whose_edits_name_a_missing_module_is_refused_whole(qtbot, window, demo_dir, tmp_path):
    from tests.gui_helpers import wait_ready

    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    before = window.session.config()
    errors = []
    window.session.messages.error_raised.connect(errors.append)
    window.open_project(str(_project_with_edits(tmp_path / "bad.tsproj.json", "resnet18", "layer9")))
    assert window.session.config() == before and window.training_panel.epochs_spin.value() == before.train.epochs
    refusal = [e for e in errors if e]
    assert len(refusal) == 1 and "layer9" in refusal[0] and "\n" not in refusal[0]
    assert window.model_panel.tree_model.plan_config == before.plan


@pytest.mark.slow
def test_a_project_of_another_model_shows_its_edits_once_that_model_is_built(qtbot, window, demo_dir, tmp_path):
    """layer1.2 is resnet34's and not resnet18's: the resnet18 tree still shown must not choke on it."""
    from tests.gui_helpers import wait_ready

    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    window.open_project(str(_project_with_edits(tmp_path / "r34.tsproj.json", "resnet34", "layer1.2",
                                                root=str(demo_dir))))
    qtbot.waitUntil(lambda: window.session.model_info is not None and window.session.model_info.arch == "resnet34",
                    timeout=60_000)
    qtbot.waitUntil(lambda: window.model_panel.tree_model.module_row("layer1.2")["frozen"], timeout=10_000)
    assert window.session.config().plan.edits[0].module == "layer1.2"


def test_cluster_script_refuses_a_project_whose_edits_name_a_missing_module(tmp_path):
    import pytest

    from engine.distributed.cluster_script import cluster_job
    from engine.errors import UserError

    project = _project_with_edits(tmp_path / "bad.tsproj.json", "resnet18", "layer9", root=str(tmp_path / "data"))
    with pytest.raises(UserError) as refused:
        cluster_job(project, 1, 1)
    message = str(refused.value)
    assert "bad.tsproj.json" in message and "layer9" in message and "\n" not in message
    good = _project_with_edits(tmp_path / "good.tsproj.json", "resnet18", "layer4", root=str(tmp_path / "data"))
    assert cluster_job(good, 1, 1).nodes == 1


# --- item 12: undo ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_undo_says_what_it_undoes_and_a_focused_box_keeps_its_ctrl_z(qtbot, window, demo_dir):
    from PySide6.QtCore import Qt

    from tests.gui_helpers import wait_ready

    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    before = window.session.config().plan
    window.session.plan.apply_preset("feature-extraction" if before.strategy != "feature-extraction" else "fine-tune")
    changed = window.session.config().plan
    assert changed != before
    what = window.session.history.undoText()
    assert what and window.undo_action.text() == f"&Undo {what}"
    window.activateWindow()
    spin = window.training_panel.epochs_spin
    spin.setFocus()
    qtbot.waitUntil(spin.hasFocus, timeout=5_000)
    qtbot.keyClick(spin, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # the box has nothing to undo
    window.undo_action.trigger()  # Edit ▸ Undo while the box is focused: the box's own
    assert window.session.config().plan == changed
    window.training_panel.start_button.setFocus()
    qtbot.waitUntil(lambda: not spin.hasFocus(), timeout=5_000)
    window.undo_action.trigger()
    assert window.session.config().plan == before
    assert window.redo_action.text() == f"&Redo {what}"


# --- item 19: the window's own words ------------------------------------------------------------------


def test_the_advice_card_speaks_in_the_windows_words(qtbot):
    from engine.config import PlanConfig
    from engine.insight.advisor import Advice
    from widgets.advice_card import AdviceCard

    card = AdviceCard()
    qtbot.addWidget(card)
    card.show_advice(Advice("feature-extraction", ("--strategy", "feature-extraction", "--base-lr", "0.001",
                                                   "--augment", "none"), PlanConfig("feature-extraction"),
                            ("24 images: with --augment none the trunk's features are computed once.",), {}))
    text = card.reasons.text()
    assert "--" not in text and "train " not in text, text
    assert "Strategy Feature extraction" in text and "Augment none" in text and "Base LR 0.001" in text
