"""The window as a person uses it: dataset, presets, a real training run in a QThread, projects."""

import time

import pytest
import torch
from PySide6.QtCore import QElapsedTimer, Qt, QTimer
from PySide6.QtWidgets import QProgressBar

from tests.gui_helpers import wait_ready
from widgets.layer_tree import FROZEN, LR
from widgets.plots import TrainingPlots

REQUIRED = ["dataFolderEdit", "demoDatasetButton", "modelCombo", "weightsCombo", "layerTree", "trainableSummaryLabel",
            "presetFeatureExtraction", "presetFineTune", "presetDiscriminative", "presetGradual", "epochsSpin",
            "batchSizeSpin", "imageSizeSpin", "startButton", "pauseButton", "stopButton", "exportButton",
            "trainingProgress", "lossPlot", "accuracyPlot", "lrPlot"]


def find(win, name):
    from PySide6.QtWidgets import QWidget

    widget = win.findChild(QWidget, name)
    assert widget is not None, name
    return widget


def small_run(win, epochs=2, size=32, weights="none"):
    win.model_panel.set_weights(weights)
    find(win, "imageSizeSpin").setValue(size)
    find(win, "epochsSpin").setValue(epochs)
    find(win, "batchSizeSpin").setValue(16)
    win.training_panel.device_combo.setCurrentIndex(win.training_panel.device_combo.findData("cpu"))


def open_demo(qtbot, win, demo_dir, **run):
    """Open the tiny demo folder and wait for its tree; with run settings, prepare a small CPU run."""
    win.open_folder(str(demo_dir))
    wait_ready(qtbot, win, classes=4)
    if run:
        small_run(win, **run)


def run_to_end(qtbot, win, timeout=120_000):
    with qtbot.waitSignal(win.controller.run_finished, timeout=timeout) as blocker:
        find(win, "startButton").click()
    return blocker.args[0]


def test_object_names_exist(window):
    for name in REQUIRED:
        find(window, name)
    assert isinstance(find(window, "trainingProgress"), QProgressBar)
    assert find(window, "layerTree").model().headerData(4, Qt.Orientation.Horizontal) == "LR"


def test_demo_dataset_feature_extraction_then_discriminative(qtbot, window, resnet18_weights_file):
    """As a new user: demo dataset, feature extraction, then discriminative LRs; what the window
    says is what the engine trained."""
    find(window, "demoDatasetButton").click()
    wait_ready(qtbot, window, classes=4)
    small_run(window, epochs=1, weights=str(resnet18_weights_file))
    window.data_panel.augment_combo.setCurrentIndex(window.data_panel.augment_combo.findData("none"))

    find(window, "presetFeatureExtraction").click()
    assert find(window, "trainableSummaryLabel").text() == "Trainable 2,052 / 11,178,564 (0.02 %) · 1 LR group"
    summary = run_to_end(qtbot, window)
    ckpt = torch.load(summary["checkpoint"], weights_only=True)
    source = torch.load(resnet18_weights_file, weights_only=True)
    frozen = [k for k in source if not k.startswith("fc.")]
    assert all(torch.equal(ckpt["model"][k], source[k]) for k in frozen)
    assert find(window, "trainingProgress").value() == find(window, "trainingProgress").maximum()
    assert window.plots._series["val_acc"].size == 1

    find(window, "presetDiscriminative").click()
    tree = window.model_panel.tree_model
    assert tree.index_for("layer4", LR).data(Qt.ItemDataRole.EditRole) == pytest.approx(1e-3 / 2.6)
    assert "6 LR groups" in find(window, "trainableSummaryLabel").text()  # stem, layer1-4, fc
    summary = run_to_end(qtbot, window)
    plotted_groups = set(window.plots._lr_series)
    assert len(plotted_groups) == 6  # the LR plot shows each group the optimizer had
    ckpt = torch.load(summary["checkpoint"], weights_only=True)
    assert not torch.equal(ckpt["model"]["conv1.weight"], source["conv1.weight"])  # now it trained


def test_checkbox_in_the_window_reaches_the_trainer(qtbot, window, demo_dir, resnet18_weights_file):
    open_demo(qtbot, window, demo_dir, epochs=1, weights=str(resnet18_weights_file))
    find(window, "presetFineTune").click()
    tree = window.model_panel.tree_model
    tree.setData(tree.index_for("layer1", FROZEN), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    tree.setData(tree.index_for("bn1", FROZEN), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    summary = run_to_end(qtbot, window)
    ckpt = torch.load(summary["checkpoint"], weights_only=True)["model"]
    source = torch.load(resnet18_weights_file, weights_only=True)
    for key in [k for k in source if k.startswith(("layer1.", "bn1."))]:
        assert torch.equal(ckpt[key], source[key]), key  # frozen: weights and BN statistics as loaded
    assert not torch.equal(ckpt["layer2.0.conv1.weight"], source["layer2.0.conv1.weight"])


def test_start_stop_restart_run_to_end(qtbot, window, demo_dir):
    open_demo(qtbot, window, demo_dir, epochs=3)
    with qtbot.waitSignal(window.controller.batch_finished, timeout=60_000):
        find(window, "startButton").click()
    assert window.plots.point_count() > 0
    assert not find(window, "startButton").isEnabled() and find(window, "stopButton").isEnabled()
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as stopped:
        find(window, "stopButton").click()
    assert stopped.args[0]["stopped"] == "user"
    small_run(window, epochs=2)
    summary = run_to_end(qtbot, window)
    assert summary["stopped"] == "completed" and summary["epochs_run"] == 2
    assert find(window, "exportButton").isEnabled()
    find(window, "exportButton").click()
    dialog = window.export_dialog
    dialog.folder_edit.setText(str(window.runs_root() / "exports"))
    dialog.boxes["safetensors"].setChecked(True)
    assert dialog.formats() == ["pt", "safetensors", "onnx"]
    dialog.snippet_format.setCurrentIndex(3)
    assert "onnxruntime" in dialog.snippet.toPlainText()
    dialog.run_button.click()
    qtbot.waitUntil(lambda: dialog.results.text().count("✔") == 3, timeout=120_000)
    exported = window.runs_root() / "exports" / "checkpoint-export.pt"
    assert exported.read_bytes() == open(summary["checkpoint"], "rb").read()
    assert (window.runs_root() / "exports" / "checkpoint.onnx.parity.json").exists()
    dialog.close()

    # Continue training: the same run folder goes on to 3 epochs, numbering continued.
    find(window, "epochsSpin").setValue(3)
    with qtbot.waitSignal(window.controller.run_finished, timeout=120_000) as resumed:
        window.continue_training()
    assert resumed.args[0]["epochs_run"] == 3 and resumed.args[0]["run_dir"] == summary["run_dir"]


def test_pause_and_resume(qtbot, window, demo_dir):
    open_demo(qtbot, window, demo_dir, epochs=2)
    with qtbot.waitSignal(window.controller.batch_finished, timeout=60_000):
        find(window, "startButton").click()
    find(window, "pauseButton").click()
    assert find(window, "pauseButton").text() == "Resume"
    qtbot.wait(300)  # the batch in flight finishes, then nothing moves
    steps = window.plots.point_count()
    qtbot.wait(1500)
    assert window.plots.point_count() == steps
    find(window, "pauseButton").click()
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as done:
        pass
    assert done.args[0]["stopped"] == "completed"


def test_errors_show_in_the_window_not_as_a_crash(qtbot, window, tmp_path):
    (tmp_path / "weird").mkdir()
    window.open_folder(str(tmp_path / "weird"))
    qtbot.waitUntil(lambda: "at least 2 class" in window.data_panel.warning_label.text(), timeout=10_000)
    find(window, "startButton").click()
    assert "dataset folder" in window.training_panel.error_label.text()


def test_nan_loss_is_reported_in_the_window(qtbot, window, demo_dir):
    open_demo(qtbot, window, demo_dir, epochs=30)
    window.training_panel.base_lr_spin.setValue(10.0)  # the spin box's maximum: plain SGD diverges
    window.training_panel.optimizer_combo.setCurrentIndex(window.training_panel.optimizer_combo.findData("sgd"))
    window.training_panel.schedule_combo.setCurrentIndex(window.training_panel.schedule_combo.findData("constant"))
    window.training_panel.weight_decay_spin.setValue(0.0)
    failures = []
    window.controller.run_failed.connect(failures.append)
    find(window, "startButton").click()
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=120_000)
    assert failures and "loss became" in failures[0]
    assert "loss became" in window.training_panel.error_label.text()
    assert find(window, "startButton").isEnabled()


def test_project_round_trip_restores_everything(qtbot, window, demo_dir, tmp_path, resnet18_weights_file):
    open_demo(qtbot, window, demo_dir)
    window.model_panel.set_arch("resnet34")
    qtbot.waitUntil(lambda: window.model_panel.tree_model.model_info.arch == "resnet34", timeout=60_000)
    window.model_panel.set_weights(str(resnet18_weights_file))
    find(window, "presetDiscriminative").click()
    tree = window.model_panel.tree_model
    tree.setData(tree.index_for("layer2", FROZEN), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    tree.setData(tree.index_for("layer4.1", LR), 3e-4, Qt.ItemDataRole.EditRole)
    find(window, "epochsSpin").setValue(7)
    find(window, "batchSizeSpin").setValue(24)
    find(window, "imageSizeSpin").setValue(112)
    window.training_panel.weight_decay_spin.setValue(0.05)
    window.training_panel.seed_spin.setValue(42)
    window.data_panel.augment_combo.setCurrentIndex(window.data_panel.augment_combo.findData("light"))
    saved = window.current_config()
    report = tree.report
    path = tmp_path / "p.tsproj.json"
    window.save_project(str(path))

    window.new_project()
    qtbot.waitUntil(lambda: window.model_panel.tree_model.model_info is not None
                    and window.model_panel.tree_model.model_info.arch == "resnet18", timeout=60_000)
    assert window.current_config() != saved
    window.open_project(str(path))
    qtbot.waitUntil(lambda: window.model_panel.tree_model.model_info.arch == "resnet34"
                    and window.data_folder == str(demo_dir) and window.scan_summary is not None
                    and window.model_panel.tree_model.plan_config == saved.plan, timeout=60_000)
    restored = window.current_config()
    assert restored.data == saved.data and restored.model == saved.model and restored.train == saved.train
    assert restored.plan == saved.plan
    assert window.model_panel.tree_model.report["modules"] == report["modules"]


def test_the_gui_thread_never_stalls_during_training(qtbot, window, demo_dir):
    open_demo(qtbot, window, demo_dir, epochs=3, size=64)
    gaps, clock = [], QElapsedTimer()
    timer = QTimer()
    timer.setInterval(10)

    def tick():
        if clock.isValid():
            gaps.append(clock.restart())
        else:
            clock.start()

    timer.timeout.connect(tick)
    timer.start()
    run_to_end(qtbot, window)
    timer.stop()
    assert len(gaps) > 50
    assert max(gaps) < 100, f"longest GUI-thread stall {max(gaps)} ms"


def test_closing_during_training_stops_and_joins_the_thread(qtbot, window, demo_dir):
    open_demo(qtbot, window, demo_dir, epochs=50)
    with qtbot.waitSignal(window.controller.batch_finished, timeout=60_000):
        find(window, "startButton").click()
    thread = window.controller._thread
    started = time.perf_counter()
    window.close()  # confirm_close is off in tests: the window stops the run without asking
    assert time.perf_counter() - started < 30
    assert not window.controller.is_running and thread.isFinished()
    metrics = (window.runs_root() / window.run_folder.rsplit("/", 1)[1] / "metrics.jsonl")
    assert len(metrics.read_text().splitlines()) < 50  # it did stop early


def test_plots_take_a_hundred_thousand_points(qtbot):
    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.show()
    for step in range(100_000):
        plots.add_batch({"epoch": 1 + step // 1000, "step": step % 1000 + 1, "steps": 1000, "loss": 1.0,
                         "lrs": {"base": 1e-3, "fc": 1e-2}})
    plots.redraw()
    qtbot.wait(10)
    assert plots.point_count() == 100_000
    assert len(plots._curves["train_loss"].xData) == 100_000  # all there; what is drawn is downsampled
    assert plots.loss_plot.getPlotItem().clipToViewMode()


def test_gui_command_opens_the_window_on_a_folder(qtbot, demo_dir, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QApplication

    from app.cli import main
    from app.main_window import MainWindow

    monkeypatch.setenv("HOME", str(tmp_path))  # QSettings and runs stay in the test's folder
    seen = {}

    def fake_exec(app):
        """Stands in for the event loop: look at the window the command opened, then close it."""
        def shown():
            return [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        qtbot.waitUntil(lambda: bool(shown()) and shown()[0].scan_summary is not None, timeout=30_000)
        window = shown()[0]
        seen["folder"], seen["classes"] = window.data_folder, len(window.scan_summary["classes"])
        window.close()
        return 0

    monkeypatch.setattr(QApplication, "exec", fake_exec)
    assert main(["gui", "--data", str(demo_dir)]) == 0
    assert seen == {"folder": str(demo_dir), "classes": 4}


def test_a_weights_file_is_checked_when_chosen(qtbot, window, demo_dir, tmp_path, resnet18_weights_file):
    open_demo(qtbot, window, demo_dir)
    window.model_panel.set_weights(str(resnet18_weights_file))
    window.model_panel.weights_changed.emit(str(resnet18_weights_file))
    qtbot.waitUntil(lambda: "dropped" in window.statusBar().currentMessage(), timeout=30_000)
    state = torch.load(resnet18_weights_file, weights_only=True)
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.pt")
    window.model_panel.set_weights(str(tmp_path / "broken.pt"))
    window.model_panel.weights_changed.emit(str(tmp_path / "broken.pt"))
    qtbot.waitUntil(lambda: "layer2.0.conv1.weight" in window.training_panel.error_label.text(), timeout=30_000)
