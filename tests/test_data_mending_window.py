"""Mending the data (issue 12), the window's part and the training's: a relabel costs the frozen
trunk no new pass (features kept per file), and the window's moves, undo and redo keep its class
table in step with the files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine import run_setup
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data import scan_dataset
from engine.dataset_edits import JOURNAL_NAME, relabel
from engine.demo import write_demo_dataset
from engine.events import Callbacks
from engine.run_folder import RunFolder
from engine.trainer import fit


def tiny_dataset(root: Path) -> Path:
    """3 classes x 8 images of 32 px."""
    return write_demo_dataset(root, classes=3, per_class=8, size=32, seed=0)


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every dataset file (the journal aside)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != JOURNAL_NAME}


def class_counts_on_disk(root: Path) -> dict[str, int]:
    """Images per class folder, as a fresh scan finds them."""
    return totals(scan_dataset(root, 0.25, 0).class_counts())


def totals(class_counts: list[dict]) -> dict[str, int]:
    return {row["class"]: row["train"] + row["val"] for row in class_counts}


class FeatureNote(Callbacks):
    def __init__(self):
        self.note = ""

    def on_run_started(self, event):
        self.note = event.feature_cache


def head_only(data: Path, out: Path, weights: Path) -> RunConfig:
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment="none", val_fraction=0.25),
                     model=ModelConfig("resnet18", str(weights)),
                     plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2),
                     train=TrainConfig(epochs=1, batch_size=8, device="cpu", precision="off", seed=0),
                     out_dir=str(out))


# --- training on the per-file store --------------------------------------------------------------


def test_after_relabelling_ten_files_the_head_retrains_with_no_trunk_pass(tmp_path, resnet18_weights_file,
                                                                         monkeypatch, one_intra_op_thread):
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))  # nothing cached by other tests
    data = tiny_dataset(tmp_path / "data")
    through_trunk: list[str] = []
    real_compute = run_setup.compute_features

    def counting(model, head, loader, *args, **kwargs):
        through_trunk.extend(sample.path for sample in loader.dataset.samples)
        return real_compute(model, head, loader, *args, **kwargs)

    monkeypatch.setattr(run_setup, "compute_features", counting)
    first = FeatureNote()
    fit(head_only(data, tmp_path / "first", resnet18_weights_file), first)
    assert len(through_trunk) == 24 and "trunk run on 24 of 24" in first.note

    moved = sorted((data / "circle").glob("*.png"))[:5] + sorted((data / "square").glob("*.png"))[:5]
    relabel(data, moved, "triangle")
    assert class_counts_on_disk(data) == {"circle": 3, "square": 3, "triangle": 18}

    through_trunk.clear()
    second = FeatureNote()
    result = fit(head_only(data, tmp_path / "second", resnet18_weights_file), second)
    assert through_trunk == [] and "trunk run on 0 of 24" in second.note
    recorded = RunFolder(result.run_dir).read_record()["dataset"]["classes"]  # what the run trained on
    assert totals(recorded) == {"circle": 3, "square": 3, "triangle": 18}
