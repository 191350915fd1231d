"""Insight, engine and command line: per-image validation records, evaluate, Grad-CAM, embeddings,
run status. CPU only, tiny generated images, weights 'none'."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import regnet

from app.cli import main
from engine.model.checkpoint import atomic_torch_save, make_checkpoint
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.data.dataset import scan_dataset
from engine.data.demo import write_demo_dataset
from engine.runs.embeddings import project_2d, read_embeddings
from engine.errors import RunFailed, UserError
from engine.insight.evaluation import evaluate_checkpoint, evaluate_run, summarize
from engine.runs.predictions import PREDICTION_COLUMNS, PredictionRecord, read_predictions
from engine.events import Callbacks, TrainingControl
from engine.insight.gradcam import _as_grid, default_layer, explain, overlay
from engine.model.architectures import available_archs, build_model, plain_model
from engine.deploy.predict import load_classifier, preprocess
from engine.runs.run_folder import RunFolder
from engine.training.trainer import fit

JSON_KEYS = {"accuracy", "balanced_accuracy", "class_names", "confusion_matrix", "per_class", "most_confused",
             "top_losses"}


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """Module fixtures run before the per-test isolation of conftest: give them their own caches."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("insight_torch_home")))
        mp.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path_factory.mktemp("insight_cache")))
        yield tmp_path_factory


def run_config(data: Path, out: Path, *, feature_cache: bool, epochs: int) -> RunConfig:
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment="none", feature_cache=feature_cache),
                     model=ModelConfig("resnet18", "none"),
                     plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2),
                     train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", telemetry=False), out_dir=str(out))


@pytest.fixture(scope="module")
def runs(isolated):
    """One tiny dataset trained twice: head on cached features, and on images (the trunk every epoch)."""
    data = write_demo_dataset(isolated.mktemp("insight_data") / "shapes", classes=3, per_class=8, size=32, seed=1)
    out = isolated.mktemp("insight_runs")
    fit(run_config(data, out / "features", feature_cache=True, epochs=2))
    fit(run_config(data, out / "images", feature_cache=False, epochs=2))
    return data, out / "features", out / "images"


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- records written during training ---------------------------------------------------------------


@pytest.mark.slow
def test_both_batch_sources_record_every_validation_image_in_scan_order(runs):
    data, features_run, images_run = runs
    scan = scan_dataset(data, 0.2, 0)
    expected = [Path(os.path.relpath(s.path, scan.root)).as_posix() for s in scan.val]
    rows = {}
    for run in (features_run, images_run):
        folder = RunFolder(run)
        assert folder.predictions_path.read_text().splitlines()[0] == ",".join(PREDICTION_COLUMNS)
        rows[run] = csv_rows(folder.predictions_path)
        assert [r["path"] for r in rows[run]] == expected  # one row per validation image, scan order
        assert [r["true"] for r in rows[run]] == [scan.class_names[s.label] for s in scan.val]
        for r in rows[run]:
            assert (data / r["path"]).is_file()
            assert r["pred"] == r["top1"] and float(r["confidence"]) == float(r["top1_probability"])
            probs = [float(r[f"top{i}_probability"]) for i in (1, 2, 3)]
            assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        points = read_embeddings(folder.embeddings_path)
        assert [p.path for p in points] == expected and all(np.isfinite([p.x, p.y]).all() for p in points)
        assert [p.pred for p in points] == [r["pred"] for r in rows[run]]
        assert folder.read_record()["status"] == "finished"
    # Same trunk, same head updates: both sources saw the same images in the same order.
    a, b = rows[features_run], rows[images_run]
    assert np.allclose([float(r["loss"]) for r in a], [float(r["loss"]) for r in b], atol=1e-3)


@pytest.mark.slow
def test_evaluate_on_a_run_agrees_with_its_predictions_file(runs, capsys):
    _, run, _ = runs
    rows = csv_rows(RunFolder(run).predictions_path)
    evaluation = evaluate_run(run, top_losses=4)
    names = evaluation.class_names
    assert names == ["circle", "square", "triangle"]
    # Direct computation from the CSV.
    k = len(names)
    direct = np.zeros((k, k), dtype=int)
    for r in rows:
        direct[names.index(r["true"]), names.index(r["pred"])] += 1
    assert evaluation.confusion_matrix == direct.tolist() and direct.sum() == len(rows)
    recalls = direct.diagonal() / direct.sum(axis=1)
    precisions = direct.diagonal() / np.maximum(1, direct.sum(axis=0))
    for i, name in enumerate(names):
        stats = evaluation.per_class[name]
        assert stats["recall"] == pytest.approx(recalls[i]) and stats["support"] == direct[i].sum()
        assert stats["precision"] == pytest.approx(precisions[i])
    assert evaluation.balanced_accuracy == pytest.approx(recalls.mean())
    assert evaluation.accuracy == pytest.approx(direct.trace() / len(rows))
    losses = [r.loss for r in evaluation.top_losses]
    assert losses == sorted(losses, reverse=True) and len(losses) == 4
    assert losses[0] == pytest.approx(max(float(r["loss"]) for r in rows), rel=1e-5)
    # The epoch records carry the same balanced accuracy for the best epoch.
    best = [line for line in RunFolder(run).read_metrics() if line["is_best"]][-1]
    assert best["val_balanced_accuracy"] == pytest.approx(evaluation.balanced_accuracy, abs=1e-6)
    assert best["confusion_matrix"] == evaluation.confusion_matrix

    assert main(["evaluate", str(run), "--json", "--top-losses", "3"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # A run folder's report also says what the run did with its BatchNorm statistics (run.json).
    assert set(report) == JSON_KEYS | {"norm_statistics"} and len(report["top_losses"]) == 3
    assert report["norm_statistics"] == RunFolder(run).read_record()["norm_statistics"]
    assert all(set(item) == {"path", "true", "pred", "loss", "confidence"} for item in report["top_losses"])
    assert all(set(v) == {"precision", "recall", "f1", "support"} for v in report["per_class"].values())
    assert report["confusion_matrix"] == evaluation.confusion_matrix

    assert main(["evaluate", str(run)]) == 0
    text = capsys.readouterr().out
    assert "balanced accuracy" in text and "confusion matrix" in text and rows[0]["path"] in text
    assert RunFolder(run).read_run().norm_choice.line in text.splitlines()[1:3]  # under the headline


def test_evaluate_a_checkpoint_on_another_folder(runs, tmp_path, capsys):
    data, run, _ = runs
    checkpoint = RunFolder(run).checkpoint_path
    evaluation = evaluate_checkpoint(checkpoint, data, device="cpu", batch_size=5)
    assert sum(map(sum, evaluation.confusion_matrix)) == 24  # every image of the folder, in batches of 5
    other = write_demo_dataset(tmp_path / "other", classes=2, per_class=2, size=32, seed=3)
    assert main(["evaluate", str(checkpoint), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transfer-studio: error: ") and err.count("\n") == 1 and "triangle" in err
    assert main(["evaluate", str(tmp_path / "missing-run")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_summary_of_hand_made_records():
    def rec(true, pred, loss):
        return PredictionRecord(f"{true}/{loss}.png", true, pred, loss, 0.5, ((pred, 0.5),))

    records = [rec("a", "a", 0.1), rec("a", "b", 2.0), rec("a", "b", 1.5), rec("b", "b", 0.2), rec("b", "a", 0.9)]
    ev = summarize(records, ["a", "b", "c"], top_losses=2)
    assert ev.confusion_matrix == [[1, 2, 0], [1, 1, 0], [0, 0, 0]]
    assert ev.per_class["a"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert ev.per_class["c"]["support"] == 0
    assert ev.balanced_accuracy == pytest.approx((1 / 3 + 1 / 2) / 2)  # class c has no images: not averaged
    assert ev.most_confused == [{"true": "a", "pred": "b", "count": 2}, {"true": "b", "pred": "a", "count": 1}]
    assert [r.loss for r in ev.top_losses] == [2.0, 1.5]


def test_malformed_predictions_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "val_predictions.csv"
    bad.write_text("path,true\nx,y\n")
    with pytest.raises(UserError, match="not a predictions file"):
        read_predictions(bad)
    bad.write_text(",".join(PREDICTION_COLUMNS) + "\nimg.png,a,b,not-a-number,0.5,b,0.5,a,0.5,,\n")
    with pytest.raises(UserError, match="line 2"):
        read_predictions(bad)
    with pytest.raises(UserError, match="cannot read"):
        read_predictions(tmp_path / "absent.csv")


def test_pca_matches_numpy():
    rng = np.random.default_rng(0)
    for shape in ((30, 5), (6, 40)):
        x = rng.normal(size=shape) * np.linspace(3, 1, shape[1])
        centred = x - x.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        expected = u[:, :2] * s[:2]
        got = project_2d(torch.tensor(x, dtype=torch.float32)).numpy()
        assert np.allclose(np.abs(got), np.abs(expected), atol=1e-3)
    flat = project_2d(torch.arange(5.0)[:, None])
    assert flat.shape == (5, 2) and torch.all(flat[:, 1] == 0)
    # A diverging run's features: no map (the run's own check reports the divergence).
    assert project_2d(torch.tensor([[1.0, float("nan")], [2.0, 3.0], [4.0, 5.0]])) is None
    assert project_2d(torch.full((4, 3), float("inf"))) is None


# --- run status -------------------------------------------------------------------------------------


class _Probe(Callbacks):
    def __init__(self, folder: RunFolder, action):
        self.folder, self.action, self.in_use_seen = folder, action, []

    def on_epoch_end(self, event):
        self.in_use_seen.append(self.folder.in_use())
        self.action()


@pytest.mark.slow
def test_status_says_failed_or_stopped_and_in_use_while_running(isolated, tmp_path):
    data = write_demo_dataset(tmp_path / "d", classes=2, per_class=5, size=32, seed=0)
    failing = RunFolder(tmp_path / "failing")

    def fail():
        raise RuntimeError("a fault in the middle of the run")

    probe = _Probe(failing, fail)
    with pytest.raises(RuntimeError):
        fit(run_config(data, failing.path, feature_cache=True, epochs=2), probe)
    assert probe.in_use_seen == [True] and not failing.in_use()
    record = failing.read_record()
    assert record["status"] == "failed" and "a fault in the middle" in record["error"]

    control = TrainingControl()
    stopping = RunFolder(tmp_path / "stopping")
    fit(run_config(data, stopping.path, feature_cache=True, epochs=3), _Probe(stopping, control.stop), control)
    assert stopping.read_record()["status"] == "stopped" and not stopping.in_use()

    blocked = RunFolder(tmp_path / "blocked")
    blocked.predictions_path.mkdir(parents=True)  # the records cannot be written: the run fails, in one line
    with pytest.raises(RunFailed, match="could not save .*val_predictions.csv"):
        fit(run_config(data, blocked.path, feature_cache=True, epochs=1))
    assert blocked.read_record()["status"] == "failed"


# --- Grad-CAM ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_layer_exists_in_every_offered_architecture(monkeypatch):
    # RegNet computes its stage widths with tensors and reads them back: that part runs on the CPU.
    widths = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kw):
        with torch.device("cpu"):
            return widths(cls, *args, **kw)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))
    families_run = set()
    for arch in available_archs():
        with torch.device("meta"):  # shapes only
            model = plain_model(arch, 3, 224)
        modules = dict(model.named_modules())
        assert default_layer(arch) in modules, arch
        family = arch.split("_")[0].rstrip("0123456789")
        if family in families_run:
            continue
        families_run.add(family)  # one forward per family: the layer gives a map Grad-CAM can use
        kept = []
        modules[default_layer(arch)].register_forward_hook(lambda _m, _i, out: kept.append(out))
        with torch.device("meta"):
            model.eval()(torch.empty(1, 3, 224, 224))
        grid = _as_grid(kept[-1], arch, default_layer(arch))
        assert grid.dim() == 4 and grid.shape[0] == 1 and min(grid.shape[2:]) >= 5, arch
    assert len(families_run) >= 15


COLOURS = {"blue": (40, 60, 230), "red": (230, 40, 40)}
MARK = 8


def marked_image(path: Path, colour, size: tuple[int, int], at: tuple[int, int], rng) -> None:
    width, height = size
    pixels = np.clip(rng.normal(128, 30, (height, width, 1)).repeat(3, axis=2), 0, 255).astype(np.uint8)
    x, y = at
    pixels[y:y + MARK, x:x + MARK] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def mark_model(isolated):
    """resnet18 from scratch at 64 px on grey noise whose only class evidence is a small red or blue
    square at a random place; a tiny training loop (fit is tested above), saved as a checkpoint."""
    root = isolated.mktemp("marks")
    rng = np.random.default_rng(0)
    marks, train, val = {}, [], []
    for split, per_class, target in (("train", 24, train), ("val", 8, val)):
        for label, (name, colour) in enumerate(COLOURS.items()):
            for i in range(per_class):
                path = root / split / name / f"{i}.png"
                at = tuple(int(v) for v in rng.integers(6, 50, size=2))
                marked_image(path, colour, (64, 64), at, rng)
                marks[path] = at
                target.append((path, label))
    torch.manual_seed(0)
    built = build_model("resnet18", 2, "none", 64)
    model, prep = built.model, built.preprocessing
    x, y = preprocess([p for p, _ in train], prep), torch.tensor([label for _, label in train])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(4):
        for batch in torch.randperm(len(y)).split(16):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():  # settle the BatchNorm statistics on the training images (few steps ran)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model(x)
    checkpoint = root / "marks.pt"
    atomic_torch_save(make_checkpoint(model, arch="resnet18", class_names=list(COLOURS), preprocessing=prep.to_dict(),
                                      plan={}, metrics={}, epoch=4, config={}), checkpoint)
    return checkpoint, val, marks


@pytest.mark.slow
def test_heat_lies_on_the_mark(mark_model):
    checkpoint, val, marks = mark_model
    classifier = load_classifier(checkpoint)
    hits, correct = 0, 0
    for path, label in val:
        result = explain(classifier, path)
        correct += result.target == list(COLOURS)[label]
        inside = np.zeros(result.cam.shape, dtype=bool)
        x, y = marks[path]
        inside[y:y + MARK, x:x + MARK] = True
        hits += result.cam[inside].mean() > result.cam[~inside].mean()
    assert correct >= 0.9 * len(val)  # the model learned the marks (else the maps mean nothing)
    assert hits >= 0.75 * len(val)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(37, 91), (120, 33)])
def test_maps_fit_odd_images_and_change_no_weight(mark_model, tmp_path, size):
    checkpoint, _, _ = mark_model
    classifier = load_classifier(checkpoint)
    model = classifier.model
    for name, param in model.named_parameters():  # partially frozen, as a feature-extraction run leaves it
        param.requires_grad_(not name.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")))
    model.train()  # explain must run in eval mode and put the mode back
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    width, height = size
    image = tmp_path / f"odd_{width}x{height}.png"
    marked_image(image, COLOURS["red"], size, (width // 2 - 4, height // 2 - 4), np.random.default_rng(1))

    result = explain(classifier, image)
    assert result.cam.shape == (height, width) and result.cam.dtype == np.float32
    assert result.cam.min() >= 0 and result.cam.max() <= 1 and result.cam.max() > 0.3
    assert list(result.probabilities.values()) == sorted(result.probabilities.values(), reverse=True)
    assert sum(result.probabilities.values()) == pytest.approx(1)
    # Outside the model's centre crop the map is 0: shorter side resized to 73 px, 64 px cropped.
    resize, crop = classifier.preprocessing.resize, classifier.preprocessing.crop
    long_side, scale = max(size), resize / min(size)
    resized = round(long_side * scale)
    offset = round((resized - crop) / 2)
    centres = (np.arange(long_side) + 0.5) * resized / long_side
    outside = (centres < offset) | (centres > offset + crop)
    along_long = result.cam if height > width else result.cam.T
    assert outside.any() and np.all(along_long[outside] == 0) and along_long[~outside].max() > 0

    other = explain(classifier, image, target="blue", layer="layer3")
    assert other.target == "blue" and other.layer == "layer3" and other.cam.shape == (height, width)
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # BatchNorm statistics included
    picture = overlay(image, result.cam)
    assert picture.mode == "RGB" and picture.size == size


@pytest.mark.slow
def test_explain_command_writes_maps_and_refuses_bad_input(mark_model, tmp_path, capsys):
    checkpoint, val, _ = mark_model
    images = [str(val[0][0]), str(val[-1][0])]  # blue/0.png, red/7.png
    out = tmp_path / "cams"
    assert main(["explain", str(checkpoint), *images, "--out", str(out), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["target"] for r in reports] == ["blue", "red"]
    for stem in ("0", "7"):
        cam = np.load(out / f"{stem}.cam.npy")
        assert cam.shape == (64, 64) and cam.dtype == np.float32 and 0 <= cam.min() <= cam.max() <= 1
        assert Image.open(out / f"{stem}.cam.png").size == (64, 64)
    same_stem = tmp_path / "copy" / "0.png"
    same_stem.parent.mkdir()
    same_stem.write_bytes(Path(images[0]).read_bytes())
    for more, hint in ((["--layer", "layer9"], "the default is layer4"), (["--target", "green"], "blue, red"),
                       ([], "same 0.cam.npy")):
        extra = [] if more else [str(same_stem)]  # two images would write the same map
        assert main(["explain", str(checkpoint), images[0], *extra, "--out", str(out), *more]) == 2
        err = capsys.readouterr().err
        assert err.startswith("transfer-studio: error: ") and err.count("\n") == 1 and hint in err
