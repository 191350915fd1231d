"""Hostile input, part two: batches of one, images gone mid-run, out of memory, full and read-only
disks under export and training. The rule is test_hostile.py's: nothing lost, nothing hangs, never a
traceback; one line naming the problem, exit 2 for bad input, exit 1 for a failed run.

Tiny generated data on the CPU; the CLI runs in this process.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.cli import main
from engine.training.batches import ImageBatches, SkippedLog
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import ImageDataset, Preprocessing, epoch_order, make_loader, scan_dataset, train_transform
from engine.data.demo import write_demo_dataset
from engine.errors import RunFailed
from engine.events import Callbacks
from engine.training.trainer import fit
from tests.helpers import QUICK, assert_refused, checkpoint, cli, data  # noqa: F401 - fixtures

FORMATS = ["pt", "safetensors", "torchscript", "onnx"]
# The image path: every layer trains, so BatchNorm sees every batch in train mode.
IMAGES = ["--weights", "none", "--image-size", "32", "--epochs", "1", "--augment", "none", "--strategy", "fine-tune"]


def config(data: Path, out: Path, *, epochs: int = 1, cache_mb: int = 2048) -> RunConfig:
    """Images through the whole model (fine-tune), batches of 8, no validation."""
    return RunConfig(data=DataConfig(root=str(data), val_fraction=0.0, image_size=32, augment="none",
                                     num_workers=0, decoded_cache_mb=cache_mb),
                     model=ModelConfig("resnet18", "none"), plan=PlanConfig(strategy="fine-tune"),
                     train=TrainConfig(epochs=epochs, batch_size=8, device="cpu"), out_dir=str(out))


def _spoil(path: Path) -> None:
    """Zero a PNG's pixel data, keeping its header and end marker (all a scan reads): decoding fails."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at + 4 + length] = bytes(length)
    path.write_bytes(bytes(data))


PREP = Preprocessing(resize=32, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def assert_failed_run(result, *words: str) -> str:
    """Exit 1 and one error line, the last one on stderr (a run prints its progress before), no traceback."""
    rc, _, err = result
    errors = [line for line in err.splitlines() if line.startswith("transfer-studio: error:")]
    assert rc == 1 and "Traceback" not in err and len(errors) == 1 and err.strip().endswith(errors[0]), err
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    return errors[0]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- batches of one reaching BatchNorm --------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("model, layer", [("resnet18", "bn1"), ("regnet_x_400mf", "stem.1")])  # regnet: not on meta
def test_batch_size_one_with_batchnorm_in_training_is_refused_in_one_line(model, layer, data, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    line = assert_refused(cli(capsys, "train", "--data", data, *IMAGES, "--model", model, "--batch-size", "1",
                              "--out", out), 2, "batch size of 1", "BatchNorm", "2 or more")
    assert f"layer {layer} trains" in line  # names a layer that would train on one image
    assert not (tmp_path / "new").exists()  # nothing left behind, not even the parents it made


@pytest.mark.timeout(60)
def test_lr_find_refuses_batch_size_one_like_train(data, capsys):
    assert_refused(cli(capsys, "lr-find", "--data", data, *IMAGES, "--model", "resnet18", "--batch-size", "1",
                       "--steps", "5"), 2, "batch size of 1", "BatchNorm")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model, words", [
    (["--model", "resnet1800"], "unknown architecture 'resnet1800'"),
    (["--model", "vit_b_16", "--image-size", "20"], "must be a multiple of 16 px"),
    (["--model", "inception_v3"], "too small for inception_v3"),
])
def test_batch_size_one_with_a_model_that_cannot_be_built_names_the_model_problem(model, words, data, tmp_path, capsys):
    argv = ["train", "--data", data, *IMAGES, "--batch-size", "1", *model, "--out", tmp_path / "run"]
    assert_refused(cli(capsys, *argv), 2, words)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", [[], ["--no-feature-cache"]], ids=["cached features", "images, BatchNorm frozen"])
def test_batch_size_one_trains_when_no_batchnorm_trains(source, tmp_path, capsys):
    data = write_demo_dataset(tmp_path / "D", classes=2, per_class=4, size=32, seed=0)  # 8 steps of one image
    rc, _, err = cli(capsys, "train", "--data", data, *QUICK, *source, "--batch-size", "1", "--out", tmp_path / "run")
    assert rc == 0 and "Traceback" not in err, err
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def _first_batch_left_with_one(data: Path, batch_size: int):
    """Spoil all but one file of the first training batch of epoch 1, after the scan."""
    scan = scan_dataset(data, val_fraction=0.0, seed=0)
    first = epoch_order(len(scan.train), 0, 1)[:batch_size].tolist()
    for index in first[1:]:
        _spoil(Path(scan.train[index].path))
    return scan


def test_a_batch_shrunk_to_one_by_failed_files_joins_the_next_one(data):
    scan = _first_batch_left_with_one(data, 8)
    dataset = ImageDataset(scan.train, 32, train_transform("none", 32))
    skipped = SkippedLog()
    batches = ImageBatches(make_loader(dataset, 8, True, 0, 0), None, scan.train, [], PREP,
                           torch.device("cpu"), False, skipped)
    sizes = [len(labels) for _, labels in batches.train_batches(1)]
    assert sizes == [9, 8]  # 24 files, 7 unreadable: the lone image trains with the next batch
    assert len(skipped.reasons) == 7


def test_a_last_batch_shrunk_to_one_is_left_out_of_that_epoch(data):
    scan = scan_dataset(data, val_fraction=0.0, seed=0)
    last = epoch_order(len(scan.train), 0, 1)[16:].tolist()
    for index in last[1:]:
        _spoil(Path(scan.train[index].path))
    dataset = ImageDataset(scan.train, 32, train_transform("none", 32))
    batches = ImageBatches(make_loader(dataset, 8, True, 0, 0), None, scan.train, [], PREP,
                           torch.device("cpu"), False, SkippedLog())
    assert [len(labels) for _, labels in batches.train_batches(1)] == [8, 8]


@pytest.mark.timeout(90)
def test_training_goes_on_when_failed_files_leave_a_batch_of_one(data, tmp_path):
    scan = _first_batch_left_with_one(data, 8)
    result = fit(config(data, tmp_path / "run", cache_mb=0), scan=scan)
    assert result.stopped == "completed" and len(result.skipped) == 7


# --- every image gone mid-run -----------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", ["cached features", "images"])
def test_a_run_whose_images_are_all_unreadable_fails_in_one_line(path, data, tmp_path, capsys):
    for png in data.rglob("*.png"):
        _spoil(png)  # after a scan would have accepted them: the header is intact
    argv = QUICK if path == "cached features" else [*IMAGES, "--batch-size", "8"]
    result = cli(capsys, "train", "--data", data, *argv, "--val-fraction", "0", "--out", tmp_path / "run")
    line = assert_failed_run(result, "epoch 1 had no usable training image: 24 files could not be read (first: ")
    assert ".png: corrupt" in line  # the first reason, with its file


class _DeleteEveryImageAfterEpoch1(Callbacks):
    def __init__(self, data: Path) -> None:
        self.data = data

    def on_epoch_end(self, event) -> None:
        if event.epoch == 1:
            for png in self.data.rglob("*.png"):
                png.unlink()


@pytest.mark.timeout(90)
def test_images_deleted_after_an_epoch_fail_the_run_and_keep_its_checkpoint(data, tmp_path):
    from engine.model.checkpoint import load_checkpoint

    run = tmp_path / "run"
    with pytest.raises(RunFailed, match=r"epoch 2 had no usable training image: 24 files could not be read") as info:
        fit(config(data, run, epochs=2, cache_mb=0), _DeleteEveryImageAfterEpoch1(data))
    assert "\n" not in str(info.value) and str(run / "checkpoint.pt") in str(info.value)
    assert load_checkpoint(run / "checkpoint.pt")["metrics"]["epoch"] == 1


# --- out of memory --------------------------------------------------------------------------------

CPU_ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                 "you tried to allocate 400000000000 bytes.")


def _train_step_out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")


def _build_model_out_of_memory(*args, **kwargs):
    raise RuntimeError(CPU_ALLOCATOR)


def _draw_out_of_memory(*args, **kwargs):
    raise MemoryError()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command, target, words", [
    ("train", ("engine.training.trainer.EpochLoop._step", _train_step_out_of_memory), ["--image-size", "--batch-size"]),
    ("layers", ("engine.model.architectures.build_model", _build_model_out_of_memory), ["--classes"]),
    ("demo-data", ("engine.data.demo._draw", _draw_out_of_memory), ["--size"]),
])
def test_out_of_memory_is_one_line_with_advice(command, target, words, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(*target)
    argv = {"train": ["train", "--data", data, *IMAGES, "--batch-size", "8", "--out", tmp_path / "run"],
            "layers": ["layers", "--classes", "3", "--weights", "none"],
            "demo-data": ["demo-data", tmp_path / "demo", "--size", "32"]}[command]
    assert_failed_run(cli(capsys, *argv), "out of memory", *words)


def test_the_window_words_out_of_memory_without_command_line_flags():
    from app.run_events import describe_failure

    line = describe_failure(RuntimeError(CPU_ALLOCATOR))
    assert "out of memory" in line and "image size or batch size" in line and "--" not in line


def test_a_runtime_error_that_is_not_about_memory_is_not_disguised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr("engine.model.architectures.build_model", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["layers", "--classes", "3", "--weights", "none"])


# --- full disks (export, checkpoints, training), read-only folders, a folder in the way ----------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: a resnet18 (44 MB) export cannot fit. Skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    if sys.platform != "linux" or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                                 capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_onto_a_full_disk_leaves_nothing(fmt, checkpoint, small_disk, capsys):
    assert_refused(cli(capsys, "export", checkpoint, "--format", fmt, "--out", small_disk), 2,
                   str(small_disk), "No space left on device")
    assert _files(small_disk) == set()


class _DiskFullMidway:
    """A file that takes the first `room` bytes written to it, then reports a full disk."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[: self.room]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _fill_disk_midway(monkeypatch, room: int = 1000) -> None:
    """Every file opened for writing by fd (atomic_file's temporary files) takes `room` bytes, then is full."""
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return _DiskFullMidway(fh, room) if "w" in mode else fh

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_failing_midway_keeps_the_previous_export_and_no_partial_file(fmt, checkpoint, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "exports"
    out.mkdir()
    previous = out / {"pt": "checkpoint-export.pt", "safetensors": "checkpoint.safetensors",
                      "torchscript": "checkpoint.torchscript.pt", "onnx": "checkpoint.onnx"}[fmt]
    previous.write_bytes(b"an earlier export")
    _fill_disk_midway(monkeypatch)
    assert_refused(cli(capsys, "export", checkpoint, "--format", fmt, "--out", out), 2, str(previous),
                   "No space left on device")
    assert _files(out) == {previous.name} and previous.read_bytes() == b"an earlier export"


def test_a_checkpoint_save_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """torch.save hides the failed write behind its zip writer's RuntimeError ("unexpected pos")."""
    from engine.model.checkpoint import atomic_torch_save

    _fill_disk_midway(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic_torch_save({"w": torch.zeros(10_000)}, tmp_path / "checkpoint.pt")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "checkpoint.pt")
    assert _files(tmp_path) == set()


@pytest.mark.timeout(90)
def test_training_onto_a_full_disk_fails_in_one_line(data, small_disk, capsys):
    line = assert_failed_run(cli(capsys, "train", "--data", data, *QUICK, "--out", small_disk / "run"),
                             f"could not save {small_disk / 'run' / 'checkpoint.pt'}: No space left on device")
    assert "kept" in line
    assert not [p for p in (small_disk / "run").iterdir() if p.name.endswith(".tmp")]


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder nobody can write in: a read-only tmpfs as root (permissions do not bind root), else 0o555."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("root, and cannot mount a read-only tmpfs: nothing here is read-only")
    return folder


def _read_only_problem(folder: Path) -> str:
    return "read-only" if os.path.ismount(folder) else "permission denied"


@pytest.fixture
def read_only(tmp_path):
    folder = _read_only_folder(tmp_path)
    yield folder
    if os.path.ismount(folder):
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


@pytest.mark.timeout(90)
def test_export_into_a_read_only_folder_is_one_line(checkpoint, read_only, capsys):
    assert_refused(cli(capsys, "export", checkpoint, "--format", "safetensors", "--out", read_only / "m.safetensors"),
                   2, str(read_only / "m.safetensors"), _read_only_problem(read_only))


@pytest.mark.timeout(90)
def test_export_onto_a_folder_in_the_way_is_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "checkpoint.onnx").mkdir()  # where the export's file would go
    assert_refused(cli(capsys, "export", checkpoint, "--format", "onnx", "--out", tmp_path), 2,
                   str(tmp_path / "checkpoint.onnx"), "is a folder")
    assert _files(tmp_path) == {"checkpoint.onnx"}


# --- an --out for training that cannot hold a run ----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where, words", [
    ("a file in its place", "is a file"),
    ("under a file", "not a directory"),
    ("in a read-only folder", None),
])
def test_train_into_an_out_that_cannot_hold_a_run_is_one_line(where, words, data, tmp_path, request, capsys):
    if where == "a file in its place":
        out = tmp_path / "taken"
        out.write_text("a file")
    elif where == "under a file":
        (tmp_path / "taken").write_text("a file")
        out = tmp_path / "taken" / "run"
    else:
        out = request.getfixturevalue("read_only") / "run"
        words = _read_only_problem(out.parent)
    before = _files(tmp_path)
    assert_refused(cli(capsys, "train", "--data", data, *QUICK, "--out", out), 2, str(out), words)
    assert _files(tmp_path) == before


# --- found by going through the list again ------------------------------------------------


def _write_mislabelled(path: Path) -> Path:
    import pickle

    if path.suffix == ".safetensors":
        path.write_bytes((16).to_bytes(8, "little") + b"{not json header")  # a header length, then garbage
    else:
        path.write_bytes(pickle.dumps({"not": "a model"}))
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["model.torchscript.pt", "model.onnx", "model.safetensors"])
def test_predict_on_a_file_that_is_not_what_its_suffix_says_is_one_line(name, data, tmp_path, capsys):
    bad = _write_mislabelled(tmp_path / name)
    fmt = {".pt": "torchscript", ".onnx": "onnx", ".safetensors": "safetensors"}[bad.suffix]
    assert_refused(cli(capsys, "predict", bad, next((data / "circle").glob("*.png"))), 2, str(bad),
                   f"is not a valid {fmt} file")


@pytest.mark.timeout(60)
def test_a_project_file_nested_too_deeply_is_one_line(data, tmp_path, capsys):
    project = tmp_path / "deep.json"
    project.write_text('{"transfer_studio_project": 1, "data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_refused(cli(capsys, "train", "--project", project, "--out", tmp_path / "run"), 2, str(project),
                   "nested too deeply")
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
def test_a_run_record_nested_too_deeply_is_one_line(checkpoint, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    (run / "run.json").write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_refused(cli(capsys, "train", "--resume", run, "--epochs", "2"), 2, str(run / "run.json"),
                   "nested too deeply")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["export", "predict", "weights"])
def test_a_folder_given_as_a_checkpoint_or_weights_is_one_line(command, checkpoint, data, tmp_path, capsys):
    folder = checkpoint.parent  # the run folder, not its checkpoint.pt: an easy slip
    argv = {"export": ["export", folder, "--format", "pt", "--out", tmp_path / "x.pt"],
            "predict": ["predict", folder, next((data / "circle").glob("*.png"))],
            "weights": ["train", "--data", data, *QUICK, "--weights", folder, "--out", tmp_path / "run"]}[command]
    assert_refused(cli(capsys, *argv), 2, str(folder), "is not a file")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "run").exists()
