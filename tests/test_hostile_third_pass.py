"""Hostile input, third pass (issue 22): an epoch recorded without its resume state, pipes and
devices where small files belong, output streams that cannot be written, --nproc 11 and a
signalled launcher, paths too long for the file system, damaged run folders, non-finite numbers.

Each is one line and the right exit code (2 bad input, 1 a failed run), never a traceback or a hang.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.runs.run_folder import RunFolder
from tests.helpers import QUICK, assert_refused, checkpoint, cli, data, needs_posix  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
TOO_LONG_NAME = "x" * 300  # a path component over 255 bytes


def _run_copy(run: Path, tmp_path: Path) -> Path:
    """A copy of a quick run's folder, to damage."""
    import shutil

    copy = tmp_path / "copied-run"
    shutil.copytree(run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    return copy


# --- 6: an epoch recorded, its resume state not --------------------------------------------------


def test_resume_after_the_resume_state_was_lost_says_truly_why(checkpoint, tmp_path, capsys):
    run = _run_copy(checkpoint.parent, tmp_path)
    (run / "resume.pt").unlink()  # killed after epoch 1's metrics line and checkpoint, before resume.pt
    line = assert_refused(cli(capsys, "train", "--resume", run, "--epochs", "2"), 2,
                          "epoch 1 finished", "resume.pt", "was not saved", "start a new run")
    assert "before its first epoch ended" not in line


def test_resume_of_a_run_stopped_before_any_epoch_still_says_so(checkpoint, tmp_path, capsys):
    run = _run_copy(checkpoint.parent, tmp_path)
    (run / "resume.pt").unlink()
    (run / "metrics.jsonl").write_text("")
    assert_refused(cli(capsys, "train", "--resume", run, "--epochs", "2"), 2, "before its first epoch ended")


# --- 7: pipes and devices where a small file belongs -----------------------------------------------


@needs_posix
@pytest.mark.timeout(60)
def test_a_named_pipe_as_control_file_is_refused_without_waiting(data, tmp_path, capsys):
    fifo = tmp_path / "control"
    os.mkfifo(fifo)
    assert_refused(cli(capsys, "train", "--data", data, *QUICK, "--out", tmp_path / "run", "--control-file", fifo),
                   2, "control file", "not a regular file", "named pipe")


@needs_posix
def test_a_device_as_control_file_is_refused(data, tmp_path, capsys):
    assert_refused(cli(capsys, "train", "--data", data, *QUICK, "--out", tmp_path / "run",
                       "--control-file", "/dev/zero"), 2, "control file", "not a regular file", "device")


def test_a_control_file_read_mid_run_is_bounded(tmp_path):
    from engine.distributed.remote_control import ControlFile

    path = tmp_path / "control"
    path.write_text("pause\n")
    control = ControlFile(path)
    assert control.read() == "pause"
    path.write_text("stop" + " " * 10_000_000)  # no control word: the last good one stays
    assert control.read() == "pause"


@needs_posix
@pytest.mark.timeout(60)
def test_a_named_pipe_as_project_is_refused_without_waiting(tmp_path, capsys):
    fifo = tmp_path / "project.tsproj.json"
    os.mkfifo(fifo)
    assert_refused(cli(capsys, "train", "--project", fifo, "--out", tmp_path / "run"), 2,
                   "project file", "not a regular file", "named pipe")


@needs_posix
def test_a_device_as_project_is_refused(tmp_path, capsys):
    assert_refused(cli(capsys, "train", "--project", "/dev/zero", "--out", tmp_path / "run"), 2,
                   "project file", "not a regular file")


@needs_posix
@pytest.mark.timeout(60)
def test_a_named_pipe_as_trust_registry_is_refused_without_waiting(checkpoint, tmp_path, monkeypatch, capsys):
    from engine.deploy.trust import TRUST_FILE_ENV

    fifo = tmp_path / "trusted-exports.json"
    os.mkfifo(fifo)
    monkeypatch.setenv(TRUST_FILE_ENV, str(fifo))
    pt2 = tmp_path / "model.pt2"
    pt2.write_bytes(b"PK\x03\x04 not really an export")
    image = next(Path(checkpoint).parents[1].joinpath("D").rglob("*.png"))
    assert_refused(cli(capsys, "predict", pt2, image), 2, "trust registry", "not a regular file")


# --- 8: output streams that cannot be written ---------------------------------------------------------


class _BrokenStream:
    """A text stream whose every write fails as a full device's does."""

    def __init__(self, problem: int = errno.ENOSPC) -> None:
        self.problem, self.writes = problem, 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(self.problem, os.strerror(self.problem))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_event_lines_stop_at_the_first_failed_write_and_the_run_goes_on():
    from engine.runs.event_lines import EventLines

    stream = _BrokenStream(errno.EPIPE)
    events = EventLines(stream)
    events.on_status("Scanning dataset")
    events.on_status("Building model")
    assert events.lost and stream.writes == 1


def test_a_progress_printer_on_a_full_stream_stops_printing_without_raising():
    from app.progress import ProgressPrinter

    stream = _BrokenStream()
    printer = ProgressPrinter(stream)
    printer._write_line("one", True)
    printer._write_line("two", True)
    printer.close()
    assert stream.writes == 1


def _train_process(argv: list[str], stdout, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "app.cli", "train", *map(str, argv)], cwd=ROOT, env=env,
                          stdout=stdout, stderr=stderr, text=True, timeout=300)


def _quick_train(data: Path, out: Path, *more) -> list:
    return ["--data", data, *QUICK, "--out", out, *more]


@needs_posix
@pytest.mark.slow
def test_events_to_a_full_device_keep_the_run_going_to_a_true_finish(data, tmp_path):
    with open("/dev/full", "w") as full:
        done = _train_process(_quick_train(data, tmp_path / "run", "--events-jsonl"), full)
    assert "Traceback" not in done.stderr and done.returncode == 0, done.stderr
    assert "event lines stopped early" in done.stderr
    assert RunFolder(tmp_path / "run").read_run().status == "finished"


@needs_posix
@pytest.mark.slow
def test_json_to_a_full_stdout_after_a_finished_run_is_one_line_and_exit_1(data, tmp_path):
    with open("/dev/full", "w") as full:
        done = _train_process(_quick_train(data, tmp_path / "run", "--json"), full)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert "Traceback" not in done.stderr and done.returncode == 1, done.stderr
    assert len(errors) == 1 and "could not be written to standard output" in errors[0], done.stderr
    assert RunFolder(tmp_path / "run").read_run().status == "finished"


@needs_posix
@pytest.mark.slow
def test_a_full_stderr_does_not_end_the_run(data, tmp_path):
    with open("/dev/full", "w") as full:
        done = _train_process(_quick_train(data, tmp_path / "run"), subprocess.DEVNULL, full)
    assert done.returncode == 0
    assert RunFolder(tmp_path / "run").read_run().status == "finished"


@needs_posix
@pytest.mark.slow
def test_a_reader_that_leaves_does_not_end_the_run(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "app.cli", "train", *map(str, _quick_train(data, tmp_path / "run", "--events-jsonl"))]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.read(100)
    process.stdout.close()  # the reader leaves mid-run (`| head -c 100`)
    err = process.stderr.read()
    assert process.wait(timeout=300) == 0, err
    assert "Traceback" not in err, err
    assert RunFolder(tmp_path / "run").read_run().status == "finished"


# --- 9: --nproc 11 and more; a signalled launcher ---------------------------------------------------------


class _FakeLaunch:
    """Stands in for torch's elastic_launch: records the launch config, then runs `then`."""

    def __init__(self, then=lambda: None) -> None:
        self.configs, self.then = [], then

    def __call__(self, config, entrypoint):
        self.configs.append(config)
        return lambda *args: self.then()


def test_eleven_processes_get_their_logs_redirected(monkeypatch):
    import torch.distributed.launcher.api as launcher_api
    from torch.distributed.elastic.multiprocessing.api import Std

    from engine.distributed.launch import launch_local

    fake = _FakeLaunch()
    monkeypatch.setattr(launcher_api, "elastic_launch", fake)
    assert launch_local(11, "app.cli", ["train"]) == 0
    redirects = fake.configs[0].logs_specs._redirects
    assert set(redirects) == set(range(1, 11)) and all(std == Std.ALL for std in redirects.values())


def test_sigterm_to_the_launcher_is_one_line_and_the_run_is_not_left_running(data, tmp_path, monkeypatch, capsys):
    import torch.distributed.launcher.api as launcher_api
    from torch.distributed.elastic.multiprocessing.api import SignalException

    out = tmp_path / "run"

    def rank_started_then_terminated():
        RunFolder(out).write_record({"config": {}, "status": "running"})
        raise SignalException("got signal", sigval=signal.SIGTERM)

    monkeypatch.setattr(launcher_api, "elastic_launch", _FakeLaunch(rank_started_then_terminated))
    rc, _, err = cli(capsys, "train", "--data", data, *QUICK, "--device", "cpu", "--batch-size", "4",
                     "--nproc", "2", "--out", out)
    assert rc == 128 + signal.SIGTERM
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "SIGTERM" in err, err
    assert RunFolder(out).read_run().status == "failed"


# --- 10: paths too long for the file system ---------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    lambda d, c, t: ["train", "--data", t / TOO_LONG_NAME, *QUICK, "--out", t / "run"],
    lambda d, c, t: ["train", "--data", d, *QUICK, "--out", t / TOO_LONG_NAME],
    lambda d, c, t: ["train", "--data", "/" + "/".join(["y" * 200] * 25), *QUICK, "--out", t / "run"],
    lambda d, c, t: ["predict", c, t / f"{TOO_LONG_NAME}.png"],
    lambda d, c, t: ["predict", t / f"{TOO_LONG_NAME}.pt", t / "x.png"],
    lambda d, c, t: ["evaluate", t / TOO_LONG_NAME],
    lambda d, c, t: ["evaluate", c, "--data", t / TOO_LONG_NAME],
    lambda d, c, t: ["explain", c, t / f"{TOO_LONG_NAME}.png", "--out", t / "cams"],
    lambda d, c, t: ["export", c, "--format", "pt", "--out", t / f"{TOO_LONG_NAME}.pt"],
    lambda d, c, t: ["undo", t / TOO_LONG_NAME],
    lambda d, c, t: ["suspects", "--data", t / TOO_LONG_NAME, "--model", "resnet18", "--weights", "none"],
    lambda d, c, t: ["suspects", "--data", d, "--model", "resnet18", "--weights", "none", "--run", t / TOO_LONG_NAME],
    lambda d, c, t: ["cluster-script", "--project", t / f"{TOO_LONG_NAME}.json", "--out", t / "job.sh",
                     "--nodes", "1", "--gpus-per-node", "1"],
    lambda d, c, t: ["train", "--project", t / f"{TOO_LONG_NAME}.json"],
], ids=["train-data", "train-out", "train-long-path", "predict-image", "predict-model", "evaluate-run",
        "evaluate-data", "explain-image", "export-out", "undo", "suspects-data", "suspects-run", "cluster-script",
        "project"])
def test_a_path_too_long_is_one_line(argv, data, checkpoint, tmp_path, capsys):
    rc, out, err = cli(capsys, *argv(data, checkpoint, tmp_path))
    line = assert_refused((rc, out, err), 2)
    assert "too long" in line or "File name too long" in line, line


# --- 12: damaged run folders, non-finite numbers in --json ------------------------------------------------


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("damage", [
    lambda csv: csv.write_bytes(b"path,true\n\xff\xfe\xfa\n"),
    lambda csv: csv.write_text(csv.read_text().splitlines()[0] + "\n" + "a" * 200_000 + ",b\n"),
], ids=["not-utf8", "huge-field"])
def test_evaluate_on_damaged_predictions_is_one_line(damage, checkpoint, tmp_path, capsys):
    run = _run_copy(checkpoint.parent, tmp_path)
    damage(run / "val_predictions.csv")
    assert_refused(cli(capsys, "evaluate", run), 2, "val_predictions.csv")


def test_evaluate_json_is_strict_json_with_a_non_finite_loss(checkpoint, tmp_path, capsys):
    run = _run_copy(checkpoint.parent, tmp_path)
    predictions = run / "val_predictions.csv"
    header, first, *rest = predictions.read_text().splitlines()
    cells = first.split(",")
    cells[3] = "inf"  # the loss of one image overflowed
    predictions.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    rc, out, err = cli(capsys, "evaluate", run, "--json")
    assert rc == 0, err
    report = _strict_json(out)
    assert report is not None


def test_strict_json_values_turn_non_finite_numbers_into_null():
    from engine.json_values import finite_only

    assert finite_only({"a": [1.0, float("nan")], "b": (float("-inf"), "x")}) == {"a": [1.0, None], "b": [None, "x"]}


# --- 14: flags a command would silently ignore; --folds into a run's folder ---------------------------------


@pytest.mark.parametrize("flag", [["--nproc", "2"], ["--folds", "2"], ["--control-file", "c"], ["--events-jsonl"]])
def test_lr_find_refuses_the_flags_it_would_ignore(flag, data, capsys):
    assert_refused(cli(capsys, "lr-find", "--data", data, *QUICK, *flag), 2, flag[0], "do not apply")


def test_folds_into_a_finished_runs_folder_are_refused(checkpoint, data, capsys):
    run = checkpoint.parent
    before = sorted(p.name for p in run.iterdir())
    assert_refused(cli(capsys, "train", "--data", data, *QUICK, "--folds", "2", "--out", run), 2,
                   "holds a run", "--folds")
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_model_whose_saved_outputs_are_not_finite_is_a_failed_run_not_a_checkpoint(tmp_path):
    """Issue 22, item 13: finite weights whose eval-mode outputs overflow (running statistics that
    train mode's batch statistics hid, and no validation set to see them) end the run, exit 1."""
    from types import SimpleNamespace

    from torch import nn

    from engine.errors import TrainingDiverged
    from engine.model.checkpoint import BackgroundSaver
    from engine.runs.run_folder import RunFolder
    from engine.training.listeners import BestCheckpoint, outputs_are_finite

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # a frozen norm layer, pinned: the probe must leave it so
    assert outputs_are_finite(model, 16)
    with torch.no_grad():
        model[1].running_mean.fill_(-3e38)  # finite, but (x - mean) * weight overflows in eval mode
        model[1].weight.fill_(10.0)
    assert not outputs_are_finite(model, 16)
    assert model.training and not model[1].training and model[0].training  # modes exactly as before
    saver = BackgroundSaver()
    try:
        listener = BestCheckpoint(RunFolder(tmp_path / "run"), saver, model, arch="tiny", class_names=["a", "b"],
                                  preprocessing={"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.5] * 3},
                                  config={})
        with pytest.raises(TrainingDiverged, match="outputs became NaN or infinite in epoch 3"):
            listener.on_epoch_end(SimpleNamespace(is_best=True, epoch=3))
    finally:
        saver.close()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_lr_find_multipliers_that_reach_useless_or_infinite_lrs_are_refused(capsys):
    """Issue 22, item 12: --start 1e-300 --end 1e300 swept at infinite LRs."""
    for flags, word in ((["--start", "1e-300"], "first multiplier"), (["--end", "1e300"], "last multiplier")):
        assert_refused(cli(capsys, "lr-find", "--weights", "none", *flags), 2, word)


@pytest.mark.parametrize("loss, confidence", [("-1e308", "0.5"), ("nan", "0.5"), ("0.3", "7")])
def test_predictions_with_impossible_figures_are_one_line(tmp_path, loss, confidence):
    """Issue 22, item 12: `suspects --run` overflowed on exp(1e308) from a damaged file."""
    from engine.errors import UserError
    from engine.runs.predictions import PREDICTION_COLUMNS, read_predictions

    csv = tmp_path / "val_predictions.csv"
    row = ["a/1.png", "a", "b", loss, confidence] + ["a", "0.5", "b", "0.5", "", ""]
    csv.write_text(",".join(PREDICTION_COLUMNS) + "\n" + ",".join(row) + "\n")
    with pytest.raises(UserError, match="line 2: not a valid predictions row"):
        read_predictions(csv)
