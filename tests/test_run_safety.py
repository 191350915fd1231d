"""Nothing lost: a run folder is locked while it trains and never overwritten by a new run, a
failed save stops the run at once keeping the last good files, non-finite weights are never saved."""

import errno
from dataclasses import replace

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import engine.model.checkpoint as checkpoint
from app.cli import main
from engine.errors import RunFailed, TrainingDiverged, UserError
from engine.runs.run_folder import RunFolder
from engine.training.trainer import fit
from tests.helpers import Recorder, make_config


@pytest.mark.slow
def test_a_second_run_into_a_finished_run_folder_is_refused_and_changes_nothing(demo_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fit(make_config(demo_dir, run, epochs=1))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    code = main(["train", "--data", str(demo_dir), "--weights", "none", "--image-size", "32", "--epochs", "1",
                 "--device", "cpu", "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already holds a run" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_a_run_folder_in_use_is_refused(tmp_path):
    folder = RunFolder(tmp_path / "busy")
    with folder.locked():
        with pytest.raises(UserError, match="in use by another training"):
            with RunFolder(tmp_path / "busy").locked():
                pass
    with folder.locked():  # released when the first training ended
        pass


@pytest.mark.slow
def test_the_first_failed_save_stops_the_run_with_one_line(demo_dir, tmp_path, monkeypatch):
    real_save = checkpoint.atomic_torch_save
    writes = []

    def disk_full_after_two_writes(obj, path):
        writes.append(path.name)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", disk_full_after_two_writes)
    recorder = Recorder()
    with pytest.raises(RunFailed, match=r"could not save .*No space left on device; the run is stopped"):
        fit(make_config(demo_dir, tmp_path / "full", epochs=5), recorder)
    assert len(recorder.epochs) < 5  # it did not run every epoch before telling
    saved = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1  # the last good file is still there and loads


def test_non_finite_weights_are_never_saved(demo_dir, tmp_path, monkeypatch):
    import engine.training.shared_parts as run_parts

    build = run_parts.build_model

    def build_with_a_weight_going_nan(*args, **kwargs):
        built = build(*args, **kwargs)

        def poison(optimizer, args, kwargs):  # after the step: that step's loss was finite
            with torch.no_grad():
                built.model.fc.weight[0, 0] = float("nan")

        handles.append(register_optimizer_step_post_hook(poison))
        return built

    handles = []
    monkeypatch.setattr(run_parts, "build_model", build_with_a_weight_going_nan)
    config = make_config(demo_dir, tmp_path / "nan", epochs=1)
    config = replace(config, data=replace(config.data, val_fraction=0.0),
                     train=replace(config.train, batch_size=1000))  # one step: no later loss turns NaN first
    with pytest.raises(TrainingDiverged, match=r"1 weight tensor\(s\) became NaN or infinite in epoch 1 "
                                               r"\(first: fc.weight.*no checkpoint was saved"):
        try:
            fit(config)
        finally:
            for handle in handles:
                handle.remove()
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_resume_after_a_kill_keeps_one_metrics_line_per_epoch_and_no_partial_files(demo_dir, tmp_path):
    run = tmp_path / "run"
    fit(make_config(demo_dir, run, epochs=1))
    folder = RunFolder(run)
    # What a kill leaves: epoch 2's metrics line written, its resume.pt only half written.
    folder.append_metrics({**folder.read_metrics()[0], "epoch": 2})
    (run / ".resume.pt.abc123.tmp").write_bytes(b"half a file")
    fit(make_config(demo_dir, run, epochs=2), resume=True)
    assert [line["epoch"] for line in folder.read_metrics()] == [1, 2]
    assert not list(run.glob(".*.tmp"))


def test_resume_before_the_first_epoch_ended_says_what_to_do(demo_dir, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_record({"config": make_config(demo_dir, run.path).to_dict()})
    with pytest.raises(UserError, match="stopped before its first epoch ended.*start a new run"):
        fit(make_config(demo_dir, run.path, epochs=2), resume=True)


@pytest.mark.slow
def test_resume_after_a_class_folder_was_added_is_refused(demo_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    fit(make_config(data, tmp_path / "run", epochs=1))
    shutil.copytree(data / "circle", data / "zigzag")
    with pytest.raises(UserError, match="classes changed since .*added zigzag"):
        fit(make_config(data, tmp_path / "run", epochs=2), resume=True)


def test_a_run_that_fails_before_it_starts_leaves_no_folder(tmp_path):
    config = make_config(tmp_path / "no-such-data", tmp_path / "run", epochs=1)
    with pytest.raises(UserError):
        fit(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_export_never_overwrites_its_checkpoint_and_checks_parity_by_the_format_written(demo_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fit(make_config(demo_dir, run, epochs=1))
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()
    code = main(["export", str(checkpoint), "--format", "safetensors", "--out", str(checkpoint)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "would overwrite the checkpoint" in err[0]
    assert checkpoint.read_bytes() == before
    plain_name = tmp_path / "model-without-suffix"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(plain_name)]) == 0
    assert "top-1 agreement 100.0%" in capsys.readouterr().err


def test_a_persons_checkpoints_and_metrics_are_fsynced_the_suites_need_not_be(tmp_path, monkeypatch):
    """The suite sets TRANSFER_STUDIO_NO_FSYNC (tests/conftest.py); without it every write is forced to disk."""
    import os

    from engine.atomic import atomic_write_bytes

    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    folder = RunFolder(tmp_path / "run")
    for flag in ("1", ""):
        monkeypatch.setenv("TRANSFER_STUDIO_NO_FSYNC", flag)
        synced.clear()
        atomic_write_bytes(tmp_path / "checkpoint.pt", b"weights")
        folder.start_metrics()
        folder.append_metrics({"epoch": 1})
        assert (tmp_path / "checkpoint.pt").read_bytes() == b"weights"
        assert len(synced) == (0 if flag else 3)  # the file, its folder, the metrics line


def test_a_save_still_waiting_is_replaced_by_a_newer_one_of_the_same_file(tmp_path, monkeypatch):
    """Epochs on cached features take milliseconds and a resume.pt of a resnet18 44 MB: the writer
    drops a queued write that a newer one of the same file made obsolete, and keeps every other in order."""
    import threading

    started, release, written = threading.Event(), threading.Event(), []

    def slow_save(obj, path):
        started.set()
        release.wait(10)
        written.append((path.name, obj))

    monkeypatch.setattr(checkpoint, "atomic_torch_save", slow_save)
    saver = checkpoint.BackgroundSaver()
    try:
        saver.save("checkpoint 1", tmp_path / "checkpoint.pt")
        assert started.wait(10)  # being written (until released)
        saver.save("resume 1", tmp_path / "resume.pt")
        saver.save("resume 2", tmp_path / "resume.pt")  # resume 1 still waits: it is dropped
        saver.save("checkpoint 2", tmp_path / "checkpoint.pt")  # checkpoint 1 is being written: both are kept
        release.set()
        saver.wait()
    finally:
        saver.close()
    assert written == [("checkpoint.pt", "checkpoint 1"), ("resume.pt", "resume 2"), ("checkpoint.pt", "checkpoint 2")]


def test_non_finite_tensors_names_each_tensor_with_a_nan_or_an_infinity():
    from engine.training.listeners import non_finite_tensors

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Linear(3, 2))
    assert non_finite_tensors(model) == []  # num_batches_tracked, an integer buffer, is not looked at
    with torch.no_grad():
        model[0].weight[1, 0, 0, 0] = float("nan")
        model[1].running_var[2] = float("inf")
        model[2].bias[0] = float("-inf")
    assert non_finite_tensors(model) == ["0.weight", "1.running_var", "2.bias"]
    assert non_finite_tensors(model.to(torch.bfloat16)) == ["0.weight", "1.running_var", "2.bias"]
