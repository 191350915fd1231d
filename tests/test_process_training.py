"""Runs of several processes from the window: rank 0's events read back as the engine's own
dataclasses, and Pause/Stop through the control file every rank reads."""

import pytest
import io
import threading
import time

from PySide6.QtWidgets import QWidget

from engine.runs.event_lines import EventLines, read_event_line
from engine.events import (BatchEvent, EpochEvent, FitResult, IntegrityReport, LayerStats, RunStarted,
                           SkippedFile)
from engine.distributed.remote_control import ControlFile, FileControl, write_control
from tests.gui_helpers import wait_ready


def test_event_lines_read_back_as_the_same_events():
    layers = {"layer1": LayerStats(grad_norm=0.5, update_ratio=1e-3, zero_grad_fraction=0.0)}
    started = RunStarted(run_dir="/r", device="cpu", device_name="CPU", precision="fp32", class_names=("a", "b"),
                         train_images=8, val_images=2, trainable_params=10, total_params=20, feature_cache="off",
                         notes=("n",))
    batch = BatchEvent(epoch=1, epochs=2, step=3, steps=4, global_step=3, total_steps=8, loss=0.7,
                       lrs={"fc": 1e-3}, images_per_second=12.5, eta_seconds=3.0, layers=layers)
    epoch = EpochEvent(epoch=1, epochs=2, train_loss=0.7, train_accuracy=0.5, val_loss=0.6, val_accuracy=0.5,
                       per_class_accuracy={"a": 1.0, "b": None}, confusion_matrix=[[1, 0], [1, 0]], seconds=1.0,
                       images_per_second=8.0, data_seconds=0.1, compute_seconds=0.9, lr={"fc": 1e-3},
                       trainable_params=10, is_best=True, newly_unfrozen=("layer4",),
                       integrity=IntegrityReport(epoch=1, checked=5, changed=("x.weight",)), layers=layers)
    result = FitResult(run_dir="/r", checkpoint="/r/checkpoint.pt", best_epoch=1, best_val_accuracy=0.5,
                       epochs_run=1, seconds=2.0, images_per_second=8.0, stopped="user",
                       skipped=(SkippedFile("/r/x.png", "broken"),), integrity=IntegrityReport(1, 5, ()))
    stream = io.StringIO()
    lines = EventLines(stream)
    lines.on_status("Decoding", 3, 9)
    lines.on_run_started(started)
    lines.on_batch_end(batch)
    lines.on_epoch_end(epoch)
    lines.on_result(result)
    lines.on_failed("out of memory")
    read = [read_event_line(line) for line in stream.getvalue().splitlines()]
    assert read == [("status", ("Decoding", 3, 9)), ("started", started), ("batch", batch), ("epoch", epoch),
                    ("result", result), ("failed", "out of memory")]
    assert read_event_line("loss 0.3 at step 4") is None  # a stray print is not an event
    assert read_event_line('{"event": "epoch", "epoch": 1}') is None  # nor half of one


def test_the_control_file_pauses_and_stops(tmp_path):
    path = tmp_path / "control"
    file = ControlFile(path)
    assert file.read() == "run"  # no file yet
    write_control(path, "pause")
    assert file.read() == "pause"
    path.write_text("nonsense")
    assert file.read() == "pause"  # a word it does not know leaves the last one
    control = FileControl(path)
    write_control(path, "run")
    assert control.check_step(1, 10) is False
    write_control(path, "pause")
    assert control.paused
    threading.Timer(0.5, write_control, (path, "stop")).start()
    started = time.monotonic()
    assert control.check_step(2, 10) is True  # waited while paused, then stopped
    assert time.monotonic() - started >= 0.4
    assert control.stop_requested

    one_step_epochs = FileControl(path)  # every step is an epoch's last: each is still agreed on
    write_control(path, "run")
    assert one_step_epochs.check_step(1, 1) is False
    write_control(path, "stop")
    assert one_step_epochs.check_step(1, 1) is True and one_step_epochs.stop_requested


def _find(win, name):
    widget = win.findChild(QWidget, name)
    assert widget is not None, name
    return widget


@pytest.mark.slow
def test_window_trains_as_two_processes_pauses_and_stops_cleanly(qtbot, window, demo_dir):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    window.session.settings.set_weights("none")
    _find(window, "imageSizeSpin").setValue(32)
    _find(window, "epochsSpin").setValue(50)
    _find(window, "batchSizeSpin").setValue(16)
    combo = window.training_panel.device_combo
    index = next(i for i in range(combo.count()) if combo.itemData(i) == "cpu" and "2 processes" in combo.itemText(i))
    combo.setCurrentIndex(index)
    assert window.session.config().train.processes == 2
    epochs, batches = [], []
    window.controller.epoch_finished.connect(epochs.append)
    window.controller.batch_finished.connect(batches.append)
    with qtbot.waitSignal(window.controller.epoch_finished, timeout=120_000):
        _find(window, "startButton").click()
    assert window.controller.is_running
    _find(window, "pauseButton").click()
    assert window.controller.paused
    qtbot.wait(1500)  # the step in progress (and a validation) may still end
    seen = len(batches)
    qtbot.wait(1500)
    assert len(batches) == seen  # both ranks wait at the same step
    _find(window, "pauseButton").click()
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as finished:
        _find(window, "stopButton").click()
    result = finished.args[0]
    assert isinstance(result, FitResult) and result.stopped == "user"
    assert result.epochs_run >= 1 and (window.session.run.folder.path / "checkpoint.pt").is_file()
    assert epochs and epochs[0].trainable_params > 0  # the plots had the same events as a thread's run
    assert not window.controller.is_running
    window.controller.stop()  # its control file is gone with the run: a late Stop or Pause does nothing
    window.controller.set_paused(True)


def test_a_project_with_two_processes_starts_two_unless_told_otherwise(tmp_path, demo_dir, monkeypatch, capsys):
    from dataclasses import replace

    import engine.distributed.launch
    from app.cli import main
    from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig, save_project

    launched = []
    monkeypatch.setattr(engine.distributed.launch, "launch_local", lambda n, module, args: launched.append((n, args)) or 0)
    config = RunConfig(data=DataConfig(root=str(demo_dir), image_size=32), model=ModelConfig(weights="none"),
                       train=TrainConfig(epochs=1, batch_size=8, device="cpu", processes=2))
    project = tmp_path / "two.json"
    save_project(project, replace(config, out_dir=str(tmp_path / "run")))
    assert main(["train", "--project", str(project)]) == 0
    assert [n for n, _ in launched] == [2] and "--nproc" not in launched[0][1]
    monkeypatch.setenv("WORLD_SIZE", "2")  # a rank torchrun started: it trains, it does not launch again
    monkeypatch.setattr("engine.distributed.process_group.ProcessGroup.started", lambda self, device_type: _Refused())
    assert main(["train", "--project", str(project), "--out", str(tmp_path / "rank")]) == 2
    assert len(launched) == 1
    capsys.readouterr()
    assert main(["train", "--project", str(project), "--nproc", "2"]) == 2  # no torchrun inside torchrun
    assert "under torchrun, leave it out" in capsys.readouterr().err and len(launched) == 1


class _Refused:
    def __enter__(self):
        from engine.errors import UserError

        raise UserError("stand-in: the process group would start here")

    def __exit__(self, *exc):
        return False


def test_folds_refuse_the_flags_of_single_runs(demo_dir, capsys):
    from app.cli import main

    for flag in (["--events-jsonl"], ["--control-file", "ctl"]):
        assert main(["train", "--data", str(demo_dir), "--folds", "2", *flag]) == 2
        assert "--folds prints one line per fold" in capsys.readouterr().err
