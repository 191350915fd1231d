"""One reader per run file: run.json and metrics.jsonl are read as typed records (engine.runs.records)
that give back what the writers wrote, treat a damaged field as missing, and are what the runs
list, the command line and the window all read."""

import json
import os
import time
from dataclasses import fields, replace

import pytest

from app.insight_session import history_events
from engine.config import PlanConfig
from engine.errors import UserError
from engine.events import FitResult, IntegrityReport, SkippedFile
from engine.runs.catalog import read_summary, val_accuracy_curve
from engine.runs.event_lines import read_event_line
from engine.runs.records import STARTED_FORMAT, EpochRecord, RunRecord
from engine.runs.run_folder import RunFolder
from engine.training.trainer import fit
from tests.helpers import QUICK, Recorder, cli, make_config
from widgets.export_dialog import meta_from_run

ROUNDED = {"seconds": 4, "images_per_second": 2, "data_seconds": 4, "compute_seconds": 4}  # as metrics_line rounds


# --- when a run started ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_records_its_start_keeps_it_when_continued_and_the_runs_list_shows_it(demo_dir, tmp_path):
    out = tmp_path / "run"
    before = time.strftime(STARTED_FORMAT)
    fit(make_config(demo_dir, out, epochs=1))
    after = time.strftime(STARTED_FORMAT)
    folder = RunFolder(out)
    started = folder.read_run().started
    assert before <= started <= after

    long_ago = time.mktime((2001, 2, 3, 4, 5, 6, 0, 0, -1))
    os.utime(folder.record_path, (long_ago, long_ago))  # a copied folder: its files' times say nothing
    row = read_summary(folder)
    assert row.started == started.replace("T", " ")[:16]
    assert not row.started.startswith("2001")

    folder.update_record(started="2020-01-02T03:04:05")  # as if it had started then
    fit(make_config(demo_dir, out, epochs=2), resume=True)
    assert folder.read_run().started == "2020-01-02T03:04:05"  # continuing is not starting
    assert read_summary(folder).started == "2020-01-02 03:04"


def test_a_folder_without_a_recorded_start_shows_when_run_json_was_written(tmp_path):
    folder = RunFolder(tmp_path / "old")
    folder.write_record({"config": {"model": {"arch": "resnet18"}}})  # from before "started"
    when = time.mktime((2024, 5, 6, 7, 8, 0, 0, 0, -1))
    os.utime(folder.record_path, (when, when))
    assert read_summary(folder).started == "2024-05-06 07:08"


# --- the readers give back what the writers wrote ------------------------------------------------------


def test_epoch_records_are_what_the_trainer_wrote(demo_dir, tmp_path):
    recorder = Recorder()
    config = make_config(demo_dir, tmp_path / "fe", epochs=2, augment="none",
                         plan=PlanConfig(strategy="feature-extraction", base_lr=1e-2))
    result = fit(config, recorder)
    folder = RunFolder(result.run_dir)
    epochs = folder.read_epochs()
    assert len(epochs) == len(recorder.epochs) == 2
    names = [f.name for f in fields(EpochRecord) if f.name != "raw"]
    for event, record in zip(recorder.epochs, epochs):
        assert set(record.raw) <= set(names)  # every key the writer writes has a typed field
        for name in names:
            expected = getattr(event, name)
            if name in ROUNDED:
                expected = round(expected, ROUNDED[name])
            assert getattr(record, name) == expected, name
    assert epochs[-1].integrity is not None and epochs[-1].integrity.checked > 0  # the frozen trunk was checked
    assert "fc" in epochs[-1].layers  # and telemetry read back
    assert val_accuracy_curve(folder) == ([1, 2], [e.val_accuracy for e in recorder.epochs])

    run = folder.read_run()
    assert run.result == FitResult.from_summary(result.summary())  # rounded as summary() rounds
    assert run.result.integrity == result.integrity and run.result.integrity is not None
    assert run.integrity == result.integrity
    assert run.status == "finished" and run.arch == "resnet18" and run.strategy == "feature-extraction"
    assert run.epochs_planned == 2 and run.data_root == str(demo_dir) and len(run.class_names) == 4
    assert folder.load_config() == config


def test_a_fit_result_reads_back_from_its_summary_with_its_integrity():
    result = FitResult(run_dir="/r", checkpoint="/r/checkpoint.pt", best_epoch=2, best_val_accuracy=0.75,
                       epochs_run=3, seconds=12.5, images_per_second=80.25, stopped="early-stopping",
                       skipped=(SkippedFile("/d/a.png", "cannot decode"),),
                       integrity=IntegrityReport(epoch=3, checked=120, changed=("layer1.0.conv1.weight",)))
    assert FitResult.from_summary(json.loads(json.dumps(result.summary()))) == result
    bare = replace(result, checkpoint=None, best_epoch=None, best_val_accuracy=None, skipped=(), integrity=None)
    assert FitResult.from_summary(bare.summary()) == bare


# --- damaged folders: a wrong field is a missing one ----------------------------------------------------


def test_fields_of_the_wrong_type_read_as_missing(tmp_path):
    folder = RunFolder(tmp_path / "damaged")
    folder.write_record({"config": {"model": 3, "plan": [], "train": {"epochs": "many"}}, "class_names": "ab",
                         "result": 5, "started": [], "status": 7, "integrity": {"checked": "all"},
                         "processes": "two", "dataset": 3, "preprocessing": [], "precision": 16})
    run = folder.read_run()
    assert (run.arch, run.strategy, run.epochs_planned, run.data_root) == (None, None, None, None)
    assert (run.class_names, run.result, run.started, run.status, run.integrity) == (None,) * 5
    assert (run.dataset, run.preprocessing, run.precision, run.processes) == (None, None, None, 1)
    assert run.config == {"model": 3, "plan": [], "train": {"epochs": "many"}}
    row = read_summary(folder)
    assert (row.arch, row.strategy, row.epochs_planned, row.best_val_accuracy, row.result) == ("?", "?", 0, None, None)
    with pytest.raises(UserError, match="which model"):
        meta_from_run(run)
    with pytest.raises(UserError):
        folder.load_config()

    folder.update_record(started="yesterday", result={"run_dir": "/r", "epochs_run": 1, "seconds": 1,
                                                      "images_per_second": 2, "stopped": "user",
                                                      "best_val_accuracy": "great", "integrity": "fine",
                                                      "skipped": [3, {"path": "/a.png"}]})
    run = folder.read_run()
    assert run.started is None
    assert run.result == FitResult(run_dir="/r", checkpoint=None, best_epoch=None, best_val_accuracy=None,
                                   epochs_run=1, seconds=1.0, images_per_second=2.0, stopped="user")
    folder.update_record(result={"run_dir": "/r", "epochs_run": "one"})  # no result without its figures
    assert folder.read_run().result is None


def test_damaged_metrics_lines_read_as_missing_fields_and_end_at_a_line_that_is_no_epoch(tmp_path):
    folder = RunFolder(tmp_path / "damaged")
    folder.write_record({"config": {}})
    folder.start_metrics()
    folder.append_metrics({"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.4, "val_accuracy": 0.5,
                           "lr": {"fc": 0.01}, "is_best": True})
    folder.append_metrics({"epoch": 2, "train_loss": 0.8, "train_accuracy": 0.5, "val_accuracy": "high",
                           "lr": [1], "is_best": "yes", "layers": {"fc": {"grad_norm": "x"}},
                           "integrity": {"checked": 1}, "confusion_matrix": [[1, "2"]], "per_class_accuracy": 4,
                           "newly_unfrozen": "layer4"})
    with open(folder.metrics_path, "a") as fh:
        fh.write("[1, 2]\n" + json.dumps({"epoch": 3, "train_loss": 0.7}) + "\n")
    first, second = folder.read_epochs()  # the list line ends the history
    assert (first.val_accuracy, first.lr, first.is_best) == (0.5, {"fc": 0.01}, True)
    assert (second.val_accuracy, second.lr, second.is_best, second.layers, second.integrity) == (None, {}, False, {},
                                                                                                   None)
    assert (second.confusion_matrix, second.per_class_accuracy, second.newly_unfrozen) == ([], {}, ())
    assert val_accuracy_curve(folder) == ([1], [0.5])
    assert [end.val_accuracy for _, end in history_events(folder.read_epochs(), 2)] == [0.5, None]
    assert EpochRecord.from_dict({"epoch": "1"}) is None and EpochRecord.from_dict(7) is None

    folder.metrics_path.write_bytes(b"\xff\xfe not text")
    assert folder.read_epochs() == []


def test_a_record_is_what_its_raw_json_says():
    raw = {"config": {"model": {"arch": "vit_b_16"}}, "processes": {"world_size": 2, "integrity": [{"rank": 0}]},
           "started": "2026-01-31T23:59:59", "class_names": ["a", "b"]}
    run = RunRecord.from_dict(raw)
    assert (run.arch, run.processes, run.rank_integrity, run.started) == ("vit_b_16", 2, ({"rank": 0},),
                                                                          "2026-01-31T23:59:59")
    assert run.raw is raw and run.class_names == ("a", "b")


# --- the runs list, the command line and the window read one summary -----------------------------------


def test_the_runs_list_the_command_line_and_the_window_read_the_same_result(demo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, "train", "--data", demo_dir, *QUICK, "--out", out, "--json", "--events-jsonl")
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    printed = FitResult.from_summary(json.loads(lines[-1]))  # `train --json`
    streamed = [value for kind, value in filter(None, map(read_event_line, lines)) if kind == "result"]  # the window
    folder = RunFolder(out)
    row = read_summary(folder)  # the runs list
    assert printed.integrity is not None  # a feature-extraction run: its frozen trunk was checked
    assert streamed == [printed]
    assert row.result == printed == folder.read_run().result
    assert (row.best_val_accuracy, row.epochs_run, row.status) == (printed.best_val_accuracy, printed.epochs_run,
                                                                   "finished")
