"""Hostile input, generated: every case ends as the rule says. Nothing lost, nothing hangs, never a
traceback: one line naming the problem, exit 2 for bad input, exit 1 for a failed run.

The CLI runs in this process (`app.cli.main`), on tiny generated data, on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.data.dataset import ImageDataset, eval_transform, make_loader, scan_dataset
from engine.data.demo import write_demo_dataset
from tests.helpers import QUICK, assert_refused, checkpoint, cli, data, needs_posix  # noqa: F401 - fixtures


def _strip(path: Path, width: int = 1, height: int = 2_000_000) -> Path:
    """An aspect-ratio bomb: a few KB on disk, few enough pixels for Pillow's bomb guard."""
    Image.new("L", (width, height), 128).save(path, format="PNG")
    return path


def _run_total(run_dir: Path) -> int:
    return json.loads((run_dir / "run.json").read_text())["dataset"]["total"]


# --- hangs: link loops, named pipes, absurd worker counts ----------------------------------------


@needs_posix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("links", [
    {"circle/loop": "."},
    {"circle/loop": ".", "square/up": ".."},
    {"circle/root": "/"},
    {"circle/a/b": "..", "circle/a/c": "../a", "triangle/x": "../square"},
])
def test_link_loops_end_and_count_each_file_once(data, links):
    before = scan_dataset(data, val_fraction=0.25, seed=0)
    for name, target in links.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, data / name)
    after = scan_dataset(data, val_fraction=0.25, seed=0)
    paths = [s.path for s in after.train + after.val]
    assert len(paths) == len({os.path.realpath(p) for p in paths}) == 24
    assert after.class_counts() == before.class_counts()


@needs_posix
@pytest.mark.timeout(60)
def test_training_on_a_dataset_with_link_loops_and_a_pipe_ends(data, tmp_path, capsys):
    os.symlink(".", data / "circle" / "loop")
    os.symlink("/", data / "square" / "root")
    os.mkfifo(data / "triangle" / "pipe.png")
    rc, _, err = cli(capsys, "train", "--data", data, *QUICK, "--out", tmp_path / "run")
    assert rc == 0 and "Traceback" not in err, err
    assert _run_total(tmp_path / "run") == 24
    assert "pipe.png: not a regular file (a named pipe)" in err


@needs_posix
@pytest.mark.timeout(60)
def test_a_file_replaced_by_a_named_pipe_mid_epoch_is_skipped_not_waited_for(data):
    scan = scan_dataset(data, val_fraction=0.0)
    victim = Path(scan.train[2].path)
    victim.unlink()
    os.mkfifo(victim)  # nobody will ever write to it: open() without care blocks forever
    dataset = ImageDataset(scan.train, 32, eval_transform(32))
    image, _, index, reason = dataset[2]
    assert image is None and index == 2 and reason == "not a regular file (a named pipe)"


def test_worker_count_is_capped_at_the_cpu_count(data):
    scan = scan_dataset(data, val_fraction=0.0)
    loader = make_loader(ImageDataset(scan.train, 32, eval_transform(32)), 8, True, 100_000, 0)
    assert loader.num_workers == (os.cpu_count() or 1)


# --- aspect-ratio bombs ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_aspect_ratio_bomb_is_skipped_at_scan_and_at_decode_time(data):
    bomb = _strip(data / "circle" / "strip.png")
    assert bomb.stat().st_size < 10_000
    scan = scan_dataset(data, val_fraction=0.0)
    assert [(Path(s.path).name, s.reason) for s in scan.skipped] == [
        ("strip.png", "aspect ratio 1x2000000 is beyond 50:1")]
    victim = Path(scan.train[0].path)
    _strip(victim, 2_000_000, 1)  # replaced after the scan
    image, _, _, reason = ImageDataset(scan.train, 32, eval_transform(32))[0]
    assert image is None and reason == "aspect ratio 2000000x1 is beyond 50:1"


@pytest.mark.timeout(60)
def test_an_image_too_big_once_resized_is_refused(tmp_path, monkeypatch):
    from engine.data.images import BadImage, decode_resized

    _strip(tmp_path / "wide.png", 400, 10)  # 40:1 is allowed, but at 1,000 px it is 40 million pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    assert tuple(decode_resized(tmp_path / "wide.png", 32).shape) == (3, 32, 1280)
    with pytest.raises(BadImage, match="too many pixels once resized to 1000 px"):
        decode_resized(tmp_path / "wide.png", 1000)


@pytest.mark.timeout(60)
def test_predict_refuses_an_aspect_ratio_bomb_in_one_line(checkpoint, tmp_path, capsys):
    bomb = _strip(tmp_path / "strip.png")
    assert_refused(cli(capsys, "predict", checkpoint, bomb), 2, "strip.png", "aspect ratio")


@pytest.mark.timeout(60)
def test_training_skips_an_aspect_ratio_bomb(data, tmp_path, capsys):
    _strip(data / "square" / "strip.png")
    rc, _, err = cli(capsys, "train", "--data", data, *QUICK, "--out", tmp_path / "run")
    assert rc == 0 and "Traceback" not in err, err
    assert "strip.png: aspect ratio 1x2000000 is beyond 50:1" in err


# --- a cache folder that cannot be written -------------------------------------------------------


def _unwritable_cache(kind: str, tmp_path: Path) -> Path:
    if kind == "a file in its place":
        (tmp_path / "cache").write_text("not a folder")
        return tmp_path / "cache"
    if kind == "under /proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        return Path("/proc/transfer-studio-cache")
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("permissions do not bind this user (root)")
    return folder


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["a file in its place", "under /proc", "read-only"])
def test_an_unwritable_cache_folder_is_done_without(kind, tmp_path, monkeypatch):
    """Demo dataset and cached features are only conveniences: without a cache, say so and go on."""
    from engine.data.demo import demo_note, ensure_demo_dataset
    from engine.model.features import load_cached_features, save_cached_features

    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(_unwritable_cache(kind, tmp_path)))
    note = save_cached_features("k" * 32, (torch.zeros(2, 3), torch.zeros(2)), None)
    assert note.startswith("feature cache not saved to disk") and "\n" not in note
    assert load_cached_features("k" * 32) is None
    demo = ensure_demo_dataset()
    assert (demo / ".complete").exists() and "written to" in demo_note()
    assert len(scan_dataset(demo).train) > 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_training_without_a_writable_cache_folder_ends_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(_unwritable_cache("a file in its place", tmp_path)))
    rc, _, err = cli(capsys, "train", *QUICK, "--out", tmp_path / "run")  # no --data: the demo dataset
    assert rc == 0 and "Traceback" not in err, err
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


# --- corrupted weights ----------------------------------------------------------------------------


def _overwrite_tensor_bytes(path: Path, count: int = 8) -> None:
    """Overwrite `count` bytes in the middle of the largest tensor's data (stored, not compressed)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        entry = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(entry.header_offset + 26)
        name_len, extra_len = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
        at = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2
        fh.seek(at)
        original = fh.read(count)
        fh.seek(at)
        fh.write(bytes(b ^ 0xFF for b in original))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_checkpoint_with_changed_weight_bytes_is_refused(command, checkpoint, tmp_path, capsys):
    broken = tmp_path / "checkpoint.pt"
    broken.write_bytes(checkpoint.read_bytes())
    _overwrite_tensor_bytes(broken)
    image = next((checkpoint.parent.parent / "D" / "circle").glob("*.png"))
    argv = {"predict": ["predict", broken, image],
            "export": ["export", broken, "--format", "pt", "--out", tmp_path / "out.pt"]}[command]
    assert_refused(cli(capsys, *argv), 2, str(broken),
                   "is corrupted: its weights do not match the hash stored at save time")
    assert not (tmp_path / "out.pt").exists()


def test_a_checkpoint_saved_before_hashes_still_loads(checkpoint, tmp_path):
    from engine.model.checkpoint import load_checkpoint

    old = torch.load(checkpoint, weights_only=True)
    assert isinstance(old.pop("weights_sha256"), str)
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["arch"] == old["arch"]


# --- zero-byte, garbage and mislabelled PyTorch files; malformed checkpoints ----------------------

BAD_FILES = {
    "zero bytes": (lambda good: b"", "is empty"),
    "text": (lambda good: b"this is not a checkpoint\n" * 4, "is not a PyTorch file"),
    "cut short": (lambda good: good[: len(good) // 2], "is not a PyTorch file, or is damaged"),
    "an empty pickle": (lambda good: b"\x80\x02.", "is not a PyTorch file, or is damaged"),
}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("content", BAD_FILES)
@pytest.mark.parametrize("role", ["checkpoint", "weights", "cached ImageNet file", "resume.pt"])
def test_a_bad_pytorch_file_is_one_line(role, content, checkpoint, data, tmp_path, monkeypatch, capsys):
    import shutil

    from engine.model.architectures import weights_cache_path

    make, words = BAD_FILES[content]
    bytes_ = make(checkpoint.read_bytes())
    if role == "checkpoint":
        bad = tmp_path / "checkpoint.pt"
        argv = ["predict", bad, next((data / "circle").glob("*.png"))]
    elif role == "weights":
        bad = tmp_path / "weights.pth"
        argv = ["train", "--data", data, *QUICK, "--weights", bad, "--out", tmp_path / "run"]
    elif role == "cached ImageNet file":
        bad = weights_cache_path("resnet18")
        bad.parent.mkdir(parents=True, exist_ok=True)
        argv = ["train", "--data", data, *QUICK, "--weights", "imagenet", "--out", tmp_path / "run"]
    else:
        run = tmp_path / "run"
        shutil.copytree(checkpoint.parent, run)
        bad = run / "resume.pt"
        argv = ["train", "--resume", run, "--epochs", "2"]
    bad.write_bytes(bytes_)
    assert_refused(cli(capsys, *argv), 2, str(bad), words)


def _tamper(ckpt: dict, case: str) -> dict:
    if case == "arch a number":
        ckpt["arch"] = 5
    elif case == "unknown arch":
        ckpt["arch"] = "resnet1800"
    elif case == "class names a string":
        ckpt["class_names"] = "abc"
    elif case == "no preprocessing":
        del ckpt["preprocessing"]
    elif case == "crop a string":
        ckpt["preprocessing"]["crop"] = "big"
    elif case == "format version a string":
        ckpt["format_version"] = "1"
    elif case == "model a list":
        ckpt["model"] = [1, 2]
    elif case == "sparse tensor":
        ckpt["model"]["fc.bias"] = ckpt["model"]["fc.bias"].to_sparse()
    elif case == "meta tensor":
        ckpt["model"]["fc.bias"] = torch.empty(3, device="meta")
    elif case == "a tensor missing":
        del ckpt["model"]["fc.bias"]
    ckpt.pop("weights_sha256", None)  # as if written so by hand or by an older version: no hash to catch it
    return ckpt


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, words", [
    ("arch a number", "arch must be an architecture name"),
    ("unknown arch", "unknown architecture 'resnet1800'"),
    ("class names a string", "class_names must be a list"),
    ("no preprocessing", "preprocessing must be an object"),
    ("crop a string", "preprocessing.crop must be a size in pixels"),
    ("format version a string", "format_version must be"),
    ("model a list", "does not hold a state dict"),
    ("sparse tensor", "fc.bias is a sparse_coo tensor"),
    ("meta tensor", "fc.bias is a meta tensor"),
    ("a tensor missing", "its weights do not fit resnet18 with 3 classes"),
])
def test_a_malformed_checkpoint_is_one_line(case, words, checkpoint, data, tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    torch.save(_tamper(torch.load(checkpoint, weights_only=True), case), bad)
    assert_refused(cli(capsys, "predict", bad, next((data / "circle").glob("*.png"))), 2, str(bad), words)


# --- crafted numbers: every numeric option, one line and exit 2 -----------------------------------

SEED_25_DIGITS = "1234567890123456789012345"
NUMBER_CASES = [
    (["train", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--epochs", "1.5"], "not a whole number"),
    (["train", "--base-lr", "inf"], "base LR must be a finite number"),
    (["train", "--base-lr", "nan"], "base LR must be a finite number"),
    (["train", "--base-lr", "0"], "base LR must be > 0"),
    (["train", "--lr", "fc=nan"], "--lr fc=nan: LR must be a finite number"),
    (["train", "--weight-decay", "inf"], "weight decay must be a finite number"),
    (["train", "--weight-decay", "-1"], "weight decay must be >= 0"),
    (["train", "--warmup-epochs", "inf"], "warm-up epochs must be a finite number"),
    (["train", "--warmup-epochs", "nan"], "warm-up epochs must be a finite number"),
    (["train", "--label-smoothing", "1"], "label smoothing must be in [0, 1)"),
    (["train", "--val-fraction", "nan"], "val fraction must be a finite number"),
    (["train", "--workers", "-1"], "loader workers must be >= 0"),
    (["train", "--seed", SEED_25_DIGITS], "seed must be in [0, 4294967295]"),
    (["train", "--seed", "-1"], "seed must be in [0, 4294967295]"),
    (["train", "--patience", "-1"], "early-stopping patience (0: off) must be >= 0"),
    (["train", "--batch-size", "0"], "batch size must be >= 1"),
    (["train", "--image-size", "8"], "image size must be at least 16 px"),
    (["train", "--image-size", "10000"], "image size must be at most 2048 px"),
    (["train", "--gradual-every", "0"], "gradual unfreezing interval (epochs) must be >= 1"),
    (["train", "--discriminative-factor", "inf"], "discriminative factor must be a finite number"),
    (["layers", "--classes", "3", "--discriminative-factor", "0"], "discriminative factor must be >= 1"),
    (["layers", "--classes", "3", "--discriminative-factor", "-1"], "discriminative factor must be >= 1"),
    (["layers", "--classes", "3", "--discriminative-factor", "nan"], "discriminative factor must be a finite"),
    (["layers", "--classes", "3", "--weight-decay", "nan"], "weight decay must be a finite number"),
    (["layers", "--classes", "1e11"], "not a whole number"),
    (["layers", "--classes", "1"], "classes must be in [2, 100000]"),
    (["layers", "--classes", "100000000000"], "classes must be in [2, 100000]"),
    (["layers", "--classes", "3", "--depth", "-1"], "depth must be >= 0"),
    (["layers", "--classes", "3", "--lr", "fc=inf"], "--lr fc=inf: LR must be a finite number"),
    (["export", "ckpt.pt", "--parity-images", "0"], "parity images must be >= 1"),
    (["export", "ckpt.pt", "--tolerance", "-1"], "tolerance must be >= 0"),
    (["export", "ckpt.pt", "--tolerance", "nan"], "tolerance must be a finite number"),
    (["demo-data", "out", "--seed", "-1"], "seed must be in [0, 4294967295]"),
    (["demo-data", "out", "--seed", SEED_25_DIGITS], "seed must be in [0, 4294967295]"),
    (["demo-data", "out", "--classes", "9"], "demo classes must be in [2, 8]"),
    (["demo-data", "out", "--size", "0"], "demo image size must be at least 16 px"),
    (["demo-data", "out", "--size", "100000"], "demo image size must be at most 1024 px"),
    (["predict", "ckpt.pt", "x.png", "--top-k", "0"], "top-k must be >= 1"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv, words", NUMBER_CASES, ids=[" ".join(a) for a, _ in NUMBER_CASES])
def test_a_crafted_number_is_one_line_and_exit_2(argv, words, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written: if it were, it would land here
    if argv[0] == "train":
        argv = [*argv, "--data", data, "--weights", "none", "--out", "run"]
    elif argv[0] == "layers":
        argv = [*argv, "--weights", "none"]
    assert_refused(cli(capsys, *argv), 2, words)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting, words", [
    ({"train": {"seed": int(SEED_25_DIGITS)}}, "seed must be in [0, 4294967295]"),
    ({"train": {"seed": -1}}, "seed must be in [0, 4294967295]"),
    ({"train": {"warmup_epochs": 1e308, "epochs": 0}}, "epochs must be >= 1"),
    ({"plan": {"discriminative_factor": 0.5}}, "discriminative factor must be >= 1"),
    ({"data": {"num_workers": -4}}, "loader workers must be >= 0"),
    ({"data": {"image_size": 10000}}, "image size must be at most 2048 px"),
])
def test_a_project_file_is_held_to_the_same_numbers(setting, words, data, tmp_path, capsys):
    project = tmp_path / "p.json"
    project.write_text(json.dumps({"transfer_studio_project": 1, "data": {"root": str(data)}, **{
        k: ({**v, "root": str(data)} if k == "data" else v) for k, v in setting.items()}}))
    assert_refused(cli(capsys, "train", "--project", project, "--out", tmp_path / "run"), 2, "p.json", words)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["onto a file", "under /proc"])
def test_demo_data_into_a_place_that_cannot_hold_it_is_one_line(where, tmp_path, capsys):
    if where == "onto a file":
        target = tmp_path / "taken"
        target.write_text("a file")
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        target = Path("/proc/transfer-studio-demo")
    assert_refused(cli(capsys, "demo-data", target, "--classes", "2", "--per-class", "1", "--size", "16"), 2,
                   "cannot write the demo dataset", str(target))
