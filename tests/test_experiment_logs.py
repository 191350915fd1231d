"""Experiment logs beside the run folder: TensorBoard event files (on by default, offline) and MLflow
(an optional extra). The event files are read back here with tensorboardX's protocol buffers and the
TFRecord framing parsed by hand: the tensorboard package is not needed, and what TensorBoard would
show (its purge of steps a restarted run logs again) is applied as TensorBoard applies it."""

from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import PlanConfig
from engine.data.dataset import Sample
from engine.events import EpochEvent, FitResult, LayerStats
from engine.runs.run_folder import RunFolder
from engine.training.listeners import MetricsLog
from engine.training.tensorboard_log import TensorBoardLog
from engine.training.trainer import fit
from engine.training.validation_records import ValidationOutputs
from tests.helpers import QUICK, assert_refused, cli, data, make_config  # noqa: F401 - data: a fixture

CLASSES = ["circle", "square"]
GROUPS = {"base, fc": "lr/base_fc", "layer4 (from epoch 2)": "lr/layer4_from_epoch_2"}  # label -> scalar name


# --- reading event files as TensorBoard does -------------------------------------------------------


def read_events(logdir: Path) -> list:
    """Every event of every event file, files in name order (TensorBoard's), each record's CRCs checked."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            header = raw[at:at + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[at + 8:at + 12])[0] == masked_crc32c(header)
            body = raw[at + 12:at + 12 + length]
            assert struct.unpack("<I", raw[at + 12 + length:at + 16 + length])[0] == masked_crc32c(body)
            events.append(Event.FromString(body))
            at += 16 + length
        assert at == len(raw), f"{path.name} ends in the middle of a record"
    return events


def shown_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them: every point logged (a step logged twice is
    two points), except that a session START at step s drops the points at s or later logged before
    it (a restarted run's purge)."""
    from tensorboardX.proto.event_pb2 import SessionLog

    shown: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(logdir):
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            shown = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in shown.items()}
        for value in event.summary.value:
            if value.HasField("simple_value"):
                shown.setdefault(value.tag, []).append((event.step, value.simple_value))
    return shown


def shown_at(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value}, each step shown once (asserted)."""
    points = shown_scalars(logdir)
    for tag, values in points.items():
        steps = [s for s, _ in values]
        assert len(steps) == len(set(steps)), f"{tag} shows a step twice: {steps}"
    return {tag: dict(values) for tag, values in points.items()}


def logged_steps(logdir: Path, tag: str) -> list[int]:
    return [event.step for event in read_events(logdir) for value in event.summary.value if value.tag == tag]


def tags(logdir: Path) -> set[str]:
    return {value.tag for event in read_events(logdir) for value in event.summary.value}


def assert_scalars_equal_metrics(folder: RunFolder) -> None:
    """Every figure of metrics.jsonl that TensorBoard has is there, at step = epoch, with the same value."""
    shown = shown_at(folder.tensorboard_path)
    lines = folder.read_metrics()
    assert lines
    for line in lines:
        epoch = line["epoch"]
        expected = {"loss/train": line["train_loss"], "accuracy/train": line["train_accuracy"],
                    "loss/val": line["val_loss"], "accuracy/val": line["val_accuracy"],
                    "balanced_accuracy/val": line["val_balanced_accuracy"]}
        for module, stats in line.get("layers", {}).items():
            expected[f"update_ratio/{module}"] = stats["update_ratio"]
            expected[f"grad_norm/{module}"] = stats["grad_norm"]
        for tag, value in expected.items():
            assert shown[tag][epoch] == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, epoch)
        shown_lrs = {tag: steps[epoch] for tag, steps in shown.items() if tag.startswith("lr/") and epoch in steps}
        assert sorted(shown_lrs.values()) == pytest.approx(sorted(line["lr"].values()), rel=1e-6)
    assert sorted(shown["loss/train"]) == [line["epoch"] for line in lines]  # each epoch once


# --- the listener on its own, with made-up epochs: fast ------------------------------------------------


def epoch_event(epoch: int, loss: float, is_best: bool = True) -> EpochEvent:
    return EpochEvent(
        epoch=epoch, epochs=3, train_loss=loss, train_accuracy=0.5 + epoch / 10, val_loss=loss + 0.1,
        val_accuracy=0.25 * epoch, per_class_accuracy={"circle": 1.0, "square": 0.5}, confusion_matrix=[[3, 0], [1, 1]],
        seconds=0.1, images_per_second=100.0, data_seconds=0.01, compute_seconds=0.09,
        lr={"base, fc": 1e-3 / epoch, "layer4 (from epoch 2)": 5e-4}, trainable_params=10, is_best=is_best,
        layers={"layer4": LayerStats(0.5 * epoch, 1e-3, 0.0), "fc": LayerStats(2.0, 3e-3 * epoch, 0.1)},
        val_balanced_accuracy=0.2 * epoch)


def listener(folder: RunFolder, latest=lambda: None) -> TensorBoardLog:
    config = make_config("data", folder.path).to_dict()
    return TensorBoardLog(folder, config, CLASSES, "data", latest)


def result(folder: RunFolder) -> FitResult:
    return FitResult(run_dir=str(folder.path), checkpoint=None, best_epoch=2, best_val_accuracy=0.5, epochs_run=2,
                     seconds=1.0, images_per_second=1.0, stopped="completed")


def test_the_scalars_are_metrics_jsonl_figures_and_the_best_epochs_confusion_an_image(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    metrics, board = MetricsLog(folder), listener(folder)
    board.on_fit_start(None)
    for epoch, best in ((1, True), (2, False), (3, True)):
        board.on_epoch_start(epoch, None)
        event = epoch_event(epoch, 1.0 / epoch, is_best=best)
        metrics.on_epoch_end(event)
        board.on_epoch_end(event)
    board.on_fit_end(result(folder))

    assert_scalars_equal_metrics(folder)
    shown = shown_at(folder.tensorboard_path)
    assert {"lr/base_fc", "lr/layer4_from_epoch_2", "grad_norm/fc", "update_ratio/layer4"} <= set(shown)
    assert shown["lr/base_fc"] == pytest.approx({1: 1e-3, 2: 5e-4, 3: 1e-3 / 3})
    assert logged_steps(folder.tensorboard_path, "confusion_matrix/val") == [1, 3]  # new bests only
    image = next(v.image for e in read_events(folder.tensorboard_path) for v in e.summary.value
                 if v.tag == "confusion_matrix/val")
    assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 2 and image.height > 2
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= tags(
        folder.tensorboard_path)


def test_hparams_are_the_configuration_flat():
    from engine.training.scalars import config_values

    values = config_values(make_config("data", "out", plan=PlanConfig(strategy="fine-tune")).to_dict())
    assert values["train.epochs"] == 2 and values["model.arch"] == "resnet18" and values["train.tensorboard"] is True
    assert values["plan.edits"] == "[]" and "data.num_workers" not in values  # lists as JSON, None left out


def test_a_continued_run_appends_and_an_epoch_logged_twice_is_shown_once(tmp_path):
    folder = RunFolder(tmp_path / "run")
    first = listener(folder)
    first.on_fit_start(None)
    for epoch in (1, 2):  # killed after logging epoch 2, before its resume state was saved
        first.on_epoch_start(epoch, None)
        first.on_epoch_end(epoch_event(epoch, 1.0 + epoch))
    first._close()  # the process died: nothing more was written

    again = listener(folder)  # continues after epoch 1, so epoch 2 runs (and is logged) again
    again.on_fit_start(None)
    for epoch in (2, 3):
        again.on_epoch_start(epoch, None)
        again.on_epoch_end(epoch_event(epoch, 10.0 + epoch))
    again.on_fit_end(result(folder))

    assert len(list(folder.tensorboard_path.glob("events.out.tfevents.*"))) == 2  # appended, not replaced
    assert logged_steps(folder.tensorboard_path, "loss/train") == [1, 2, 2, 3]  # on disk: both tries of epoch 2
    assert shown_scalars(folder.tensorboard_path)["loss/train"] == [(1, 2.0), (2, 12.0), (3, 13.0)]


def test_a_logging_failure_is_one_warning_and_training_goes_on(tmp_path, caplog, monkeypatch):
    from engine.training.tensorboard_files import EventFile

    folder = RunFolder(tmp_path / "run")
    board = listener(folder)
    board.on_fit_start(None)

    def full_disk(self, values, step):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EventFile, "scalars", full_disk)
    with caplog.at_level(logging.WARNING, logger="transfer_studio"):
        for epoch in (1, 2, 3):
            board.on_epoch_start(epoch, None)
            board.on_epoch_end(epoch_event(epoch, 1.0))  # raises nothing
        board.on_fit_end(result(folder))
    warnings = [r.getMessage() for r in caplog.records if r.name == "transfer_studio"]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "the run goes on" in warnings[0]


def test_without_tensorboardx_the_run_goes_on_and_says_how_to_install_it(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "tensorboardX.summary", None)
    board = listener(RunFolder(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="transfer_studio"):
        board.on_fit_start(None)
        board.on_epoch_end(epoch_event(1, 1.0))
        board.on_fit_end(result(RunFolder(tmp_path / "run")))
    warnings = [r.getMessage() for r in caplog.records if r.name == "transfer_studio"]
    assert len(warnings) == 1 and "pip install tensorboardX" in warnings[0]


def test_the_best_epochs_features_go_to_the_projector_with_thumbnails(data, tmp_path):
    folder = RunFolder(tmp_path / "run")
    images = sorted(data.rglob("*.png"))[:5]
    outputs = ValidationOutputs(
        samples=tuple(Sample(str(p), i % 2) for i, p in enumerate(images)), labels=torch.tensor([0, 1, 0, 1, 0]),
        logits=torch.tensor([[2.0, 0], [0, 2], [0, 2], [0, 2], [2, 0]]), features=torch.arange(20.0).view(5, 4))
    board = listener(folder, latest=lambda: outputs)
    board.data_root = str(data)
    board.on_fit_start(None)
    board.on_epoch_start(1, None)
    board.on_epoch_end(epoch_event(1, 1.0, is_best=True))
    board.on_epoch_end(epoch_event(2, 1.0, is_best=False))  # not a best: the projector keeps epoch 1
    board.on_fit_end(result(folder))

    config = (folder.tensorboard_path / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "val_features:00001"' in config and "single_image_dim: 32" in config
    shown = folder.tensorboard_path / "00001" / "val_features"
    assert np.loadtxt(shown / "tensors.tsv", delimiter="\t").tolist() == outputs.features.tolist()
    rows = (shown / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "true\tpred\tpath" and rows[2].split("\t")[:2] == ["square", "square"] and len(rows) == 6
    assert rows[1].split("\t")[2] == images[0].relative_to(data).as_posix()
    from PIL import Image

    with Image.open(shown / "sprite.png") as sprite:
        assert sprite.size == (96, 96)  # 5 thumbnails of 32 px: a 3 x 3 grid
        assert sprite.getpixel((10, 10)) != (0, 0, 0)  # the first image, not the empty background


# --- switches and one-line refusals: fast ----------------------------------------------------------------


def test_no_tensorboard_and_the_project_key_switch_it_off(tmp_path):
    import json

    from app.cli_args import apply_flags
    from engine.model.project import load_project

    assert apply_flags(make_config("data", "out"), {"no_tensorboard": True}).train.tensorboard is False
    project = tmp_path / "p.tsproj.json"
    project.write_text(json.dumps({"transfer_studio_project": 1, "train": {"tensorboard": False}}))
    assert load_project(project).train.tensorboard is False


def test_mlflow_missing_is_one_line_exit_2_before_anything_trains(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    line = assert_refused(cli(capsys, "train", "--data", data, *QUICK, "--out", tmp_path / "run",
                              "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}"), 2, "mlflow")
    assert "pip install 'transfer-studio[mlflow]'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, words", [
    (["--mlflow-experiment", "x"], ["--mlflow-experiment", "add --mlflow"]),
    (["--mlflow", "sqlite:///m.db", "--folds", "2"], ["--mlflow", "--folds"]),
])
def test_mlflow_flags_that_cannot_apply_are_refused(flags, words, data, capsys):
    assert_refused(cli(capsys, "train", "--data", data, *QUICK, *flags), 2, *words)


# --- real runs: slow -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def continued_run(demo_dir, tmp_path_factory) -> RunFolder:
    """One epoch, then continued to a second: two starts of one run."""
    out = tmp_path_factory.mktemp("tb") / "run"
    config = make_config(demo_dir, out, epochs=1, augment="none", plan=PlanConfig(strategy="feature-extraction"))
    fit(config)
    fit(make_config(demo_dir, out, epochs=2, augment="none", plan=PlanConfig(strategy="feature-extraction")),
        resume=True)
    return RunFolder(out)


@pytest.mark.slow
def test_a_real_runs_event_files_hold_metrics_jsonl_and_continuing_duplicates_no_step(continued_run):
    assert_scalars_equal_metrics(continued_run)
    logdir = continued_run.tensorboard_path
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    assert logged_steps(logdir, "loss/train") == [1, 2]  # nothing logged twice, even on disk
    assert "grad_norm/fc" in tags(logdir) and "confusion_matrix/val" in tags(logdir)
    assert (logdir / "projector_config.pbtxt").is_file()


@pytest.mark.slow
def test_no_tensorboard_writes_no_folder(demo_dir, tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--data", demo_dir, *QUICK, "--device", "cpu", "--out", tmp_path / "run",
                     "--no-tensorboard")
    assert rc == 0, err
    assert RunFolder(tmp_path / "run").exists() and not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.slow
def test_a_run_whose_tensorboard_folder_cannot_be_made_finishes_with_one_warning(demo_dir, tmp_path, capsys, caplog):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").write_text("a file where the folder goes")
    with caplog.at_level(logging.WARNING, logger="transfer_studio"):
        rc, _, err = cli(capsys, "train", "--data", demo_dir, *QUICK, "--device", "cpu", "--out", tmp_path / "run")
    assert rc == 0 and "Traceback" not in err, err
    assert RunFolder(tmp_path / "run").read_run().status == "finished"
    warnings = [r.getMessage() for r in caplog.records if r.name == "transfer_studio"]
    assert len(warnings) == 1 and "TensorBoard logging stopped" in warnings[0]


@pytest.mark.slow
def test_mlflow_gets_parameters_metrics_per_epoch_and_the_checkpoint_with_its_card(demo_dir, tmp_path, capsys):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", demo_dir, *QUICK, "--device", "cpu", "--out", run, "--mlflow", uri)
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--resume", run, "--epochs", "2", "--mlflow", uri)  # the same MLflow run
    assert rc == 0, err

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("transfer-studio")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.params["train.epochs"] == "1"  # as first started
    assert logged.data.params["model.arch"] == "resnet18"
    lines = RunFolder(run).read_metrics()
    history = client.get_metric_history(logged.info.run_id, "accuracy/val")
    assert [(m.step, m.value) for m in history] == [(line["epoch"], pytest.approx(line["val_accuracy"]))
                                                    for line in lines]
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"run.json", "metrics.jsonl", "model"} <= artifacts
    assert {a.path for a in client.list_artifacts(logged.info.run_id, "model")} == {
        "model/checkpoint.pt", "model/checkpoint.pt.card.json", "model/checkpoint.pt.card.md"}
    assert (tmp_path / "store" / "mlartifacts").is_dir()  # beside the database, not in the working folder


# --- multi-label and regression (issue 25): their own scalars, no confusion image, no warning ---------------


def task_event(epoch: int, task: str, metrics: dict) -> EpochEvent:
    """An epoch as the trainer makes it for a task: no val accuracy, no confusion matrix, val_metrics."""
    return EpochEvent(
        epoch=epoch, epochs=2, train_loss=1.0 / epoch, train_accuracy=None if task == "regression" else 0.6,
        val_loss=0.5 / epoch, val_accuracy=None, per_class_accuracy={}, confusion_matrix=[], seconds=0.1,
        images_per_second=100.0, data_seconds=0.01, compute_seconds=0.09, lr={"base, fc": 1e-3}, trainable_params=10,
        is_best=True, task=task, val_metrics=metrics)


@pytest.mark.parametrize("task, metrics, tags_expected", [
    ("multi-label", {"mAP": 0.75, "macro_f1": 0.5, "micro_f1": 0.6}, {"mAP/val", "macro_f1/val", "micro_f1/val"}),
    ("regression", {"mae": 1.5, "rmse": 2.0, "r2": 0.25}, {"mae/val", "rmse/val", "r2/val"}),
])
def test_a_task_run_logs_its_own_scalars_and_no_confusion_image(data, tmp_path, caplog, task, metrics,
                                                               tags_expected):
    from types import SimpleNamespace

    folder = RunFolder(tmp_path / "run")
    images = sorted(data.rglob("*.png"))[:4]
    if task == "multi-label":
        labels, logits = torch.tensor([[1.0, 0], [1, 1], [0, 0], [0, 1]]), torch.tensor([[2.0, -1], [1, 1], [-1, -1],
                                                                                          [-2, 3]])
        names, run_task = ["circle", "square"], SimpleNamespace(name=task)
    else:
        labels, logits = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[0.0], [1.0], [-1.0], [2.0]])
        names = ["value"]
        run_task = SimpleNamespace(name=task, values=lambda out: out[:, 0].double() * 2.0 + 3.0)  # scale 2, mean 3
    outputs = ValidationOutputs(samples=tuple(Sample(str(p), 0) for p in images), labels=labels, logits=logits,
                                features=torch.arange(16.0).view(4, 4))
    board = TensorBoardLog(folder, make_config("data", folder.path).to_dict(), names, str(data), lambda: outputs,
                           run_task)
    with caplog.at_level(logging.WARNING, logger="transfer_studio"):
        board.on_fit_start(None)
        for epoch in (1, 2):
            board.on_epoch_start(epoch, None)
            board.on_epoch_end(task_event(epoch, task, {k: v * epoch for k, v in metrics.items()}))
        board.on_fit_end(result(folder))
    assert not caplog.records and not board.failed  # nothing skipped, nothing warned
    shown = shown_at(folder.tensorboard_path)
    assert tags_expected <= set(shown) and "accuracy/val" not in shown
    for name, value in metrics.items():
        assert shown[f"{name}/val"] == pytest.approx({1: value, 2: 2 * value})
    assert "confusion_matrix/val" not in tags(folder.tensorboard_path)
    rows = (folder.tensorboard_path / "00002" / "val_features" / "metadata.tsv").read_text().splitlines()
    if task == "multi-label":
        assert [r.split("\t")[:2] for r in rows[1:]] == [["circle", "circle"], ["circle+square", "circle+square"],
                                                         ["(none)", "(none)"], ["square", "square"]]
    else:
        assert [r.split("\t")[:2] for r in rows[1:]] == [["1", "3"], ["2", "5"], ["3", "1"], ["4", "7"]]
