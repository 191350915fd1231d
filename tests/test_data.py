"""Dataset scanning: layouts, class order, stratified split, skipped files with reasons."""

import shutil

import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from engine.data.dataset import DecodedCache, ImageDataset, collate, eval_transform, scan_dataset
from engine.data.demo import write_demo_dataset
from engine.errors import UserError


def _image(path, colour=(200, 30, 30), size=(24, 20), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def test_class_order_and_labels_match_imagefolder(tmp_path):
    for cls in ("zebra", "Apple", "mango"):
        for i, ext in enumerate((".jpg", ".PNG", ".Jpeg", ".bmp", ".TIFF", ".webp", ".gif")):
            fmt = {".jpg": "JPEG", ".PNG": "PNG", ".Jpeg": "JPEG", ".bmp": "BMP", ".TIFF": "TIFF",
                   ".webp": "WEBP", ".gif": "GIF"}[ext]
            _image(tmp_path / cls / f"img{i}{ext}", fmt=fmt)
    scan = scan_dataset(tmp_path, val_fraction=0.0)
    reference = ImageFolder(str(tmp_path))
    assert list(scan.class_names) == reference.classes == ["Apple", "mango", "zebra"]
    ours = sorted((s.path, s.label) for s in scan.train)
    # ImageFolder does not read .gif; we do. Everything else must be the same (path, label).
    assert [x for x in ours if not x[0].endswith(".gif")] == sorted(reference.samples)
    assert len(ours) == 21


def test_split_is_stratified_and_seeded(demo_dir):
    a = scan_dataset(demo_dir, val_fraction=0.25, seed=1)
    b = scan_dataset(demo_dir, val_fraction=0.25, seed=1)
    c = scan_dataset(demo_dir, val_fraction=0.25, seed=2)
    assert a.val == b.val and a.val != c.val
    for counts in a.class_counts():
        assert (counts["train"], counts["val"]) == (12, 4)
    assert not {s.path for s in a.train} & {s.path for s in a.val}


def test_train_val_layout_is_used_as_given(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _image(tmp_path / split / cls / f"{i}.png")
    scan = scan_dataset(tmp_path, val_fraction=0.5)
    assert scan.layout == "train-val"
    assert [c["train"] for c in scan.class_counts()] == [3, 3]
    assert [c["val"] for c in scan.class_counts()] == [2, 2]


def test_bad_files_are_listed_with_reasons_and_stats_reported(tmp_path):
    write_demo_dataset(tmp_path, classes=2, per_class=4, size=32)
    (tmp_path / "circle" / "empty.jpg").write_bytes(b"")
    (tmp_path / "circle" / "notes.png").write_text("hello")
    (tmp_path / "circle" / "readme.txt").write_text("not an image extension: ignored")
    scan = scan_dataset(tmp_path)
    reasons = {p.rsplit("/", 1)[1]: r for p, r in ((s.path, s.reason) for s in scan.skipped)}
    assert reasons == {"empty.jpg": "empty file", "notes.png": "not an image"}
    assert scan.total == 8
    assert scan.image_sizes["width"] == {"min": 32, "median": 32, "max": 32}
    assert any("skipped" in w for w in scan.warnings())


def test_a_file_that_breaks_mid_epoch_is_skipped_and_reported(tmp_path):
    write_demo_dataset(tmp_path, classes=2, per_class=3, size=32)
    scan = scan_dataset(tmp_path, val_fraction=0.0)
    victim = scan.train[1].path
    shutil.copy(victim, victim + ".bak")
    open(victim, "wb").write(b"garbage now")  # broke after the scan
    dataset = ImageDataset(scan.train, 36, eval_transform(32))
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert len(batch.labels) == len(scan.train) - 1
    assert batch.failures == [(1, "not an image")]
    assert batch.images.dtype == torch.uint8 and tuple(batch.images.shape[1:]) == (3, 32, 32)


def test_decoded_cache_respects_its_budget(demo_dir):
    scan = scan_dataset(demo_dir)
    one_image = 3 * 44 * 44
    cache = DecodedCache(budget_bytes=5 * one_image)
    cache.warm(scan.train, 44)
    assert len(cache.images) == 5 and cache.used_bytes <= 5 * one_image


@pytest.mark.parametrize("pays_from, threads_used", [(10.0, False), (0.0, True)])
def test_decoding_threads_only_for_images_slow_enough_to_pay_for_them(demo_dir, monkeypatch, pays_from, threads_used):
    import threading

    import engine.data.dataset

    scan = scan_dataset(demo_dir)
    decoded_on, decode = [], engine.data.dataset.decode_resized
    monkeypatch.setattr(engine.data.dataset, "decode_resized",
                        lambda *args: decoded_on.append(threading.current_thread()) or decode(*args))
    monkeypatch.setattr(engine.data.dataset, "THREADS_PAY_FROM_S", pays_from)
    cache = DecodedCache(budget_bytes=10**9)
    cache.warm(scan.train, 44)
    assert len(cache.images) == len(scan.train)  # every image, whichever way
    first = engine.data.dataset.TIMED_DECODES
    assert set(decoded_on[:first]) == {threading.current_thread()}  # timed in the calling thread
    assert (threading.current_thread() not in decoded_on[first:]) is threads_used


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "dataset folder not found"),
    (lambda p: _image(p / "only" / "a.png"), "at least 2 class"),
    (lambda p: ((p / "a").mkdir(parents=True), _image(p / "b" / "x.png")), "without a usable image"),
])
def test_unusable_dataset_folders_are_explained(tmp_path, setup, message):
    root = tmp_path / "data"
    if setup(root) is None and not root.exists() and message != "dataset folder not found":
        root.mkdir()
    with pytest.raises(UserError, match=message):
        scan_dataset(root)


def test_demo_dataset_is_identical_for_the_same_seed(tmp_path):
    a = write_demo_dataset(tmp_path / "a", classes=2, per_class=3, size=24, seed=7)
    b = write_demo_dataset(tmp_path / "b", classes=2, per_class=3, size=24, seed=7)
    c = write_demo_dataset(tmp_path / "c", classes=2, per_class=3, size=24, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 6
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_a_copy_of_a_training_image_in_validation_is_a_leak_warned_at_scan(tmp_path, capsys):
    root = write_demo_dataset(tmp_path / "d", classes=2, per_class=6, size=24, seed=0)
    given = root.parent / "given"
    a, b = sorted(p.name for p in root.iterdir())
    for split in ("train", "val"):
        for name in (a, b):
            (given / split / name).mkdir(parents=True)
    files = sorted((root / a).iterdir())
    for i, f in enumerate(files[:4]):
        shutil.copy(f, given / "train" / a / f.name)
    shutil.copy(files[0], given / "val" / a / "copy.png")  # the same bytes as a training image
    shutil.copy(files[4], given / "val" / a / files[4].name)
    for f in sorted((root / b).iterdir())[:3]:
        shutil.copy(f, given / "train" / b / f.name)
    shutil.copy(files[1], given / "train" / b / "same_bytes_other_class.png")  # a copy, but not a leak

    scan = scan_dataset(given)
    assert scan.leaks() == [(str(given / "val" / a / "copy.png"), str(given / "train" / a / files[0].name))]
    warning = [w for w in scan.warnings() if "identical copy in training" in w]
    assert warning and f"val/{a}/copy.png = train/{a}/" in warning[0] and warning[0].startswith("1 validation")
    assert scan.summary()["leaks"] == [{"val": scan.leaks()[0][0], "train": scan.leaks()[0][1]}]
    assert not scan_dataset(root).leaks()  # the demo's images all differ
