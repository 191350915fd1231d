"""`search`: Optuna over the plan's knobs, each trial a train run; the journal file continues a killed
search, several workers share it, and the best trial's flags give `train` the same plan."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.cli import build_parser, main
from app.cli_args import given_train_flags, train_config_from_args
from engine.config import DataConfig, RunConfig, save_project
from engine.errors import UserError
from engine.search import study as studies
from engine.search.pruning import PRUNED, PruneListener
from engine.search.space import (default_space, draw, grid, narrowed, stage_groups_below_head, train_flags,
                                 trial_config)
from tests.helpers import assert_refused, cli, make_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--weights", "none", "--image-size", "32", "--batch-size", "16", "--device", "cpu"]
HEAD = ["--head-only", "--space", "epochs=1"]


@pytest.fixture(scope="module")
def groups():
    return stage_groups_below_head("resnet18", 32)


def _train_config(data, flags: list[str]) -> RunConfig:
    """What `train --data DATA FLAGS` would run, built by train's own code."""
    argv = ["train", "--data", str(data), "--model", "resnet18", "--weights", "none", *flags]
    args = build_parser().parse_args(argv)
    return train_config_from_args(args, given_train_flags(argv))


def _trials(storage: Path):
    import optuna

    return optuna.load_study(study_name=studies.STUDY_NAME, storage=studies.open_storage(storage)).trials


# --- the space ------------------------------------------------------------------------------------


def test_draws_carry_only_their_strategys_knobs_and_their_flags_give_train_the_same_plan(groups, tmp_path):
    space = default_space(False, len(groups))
    rng = random.Random(0)

    def suggest(knob):
        if knob.kind == "choice":
            return rng.choice(knob.choices)
        if knob.kind == "int":
            return rng.randint(int(knob.low), int(knob.high))
        return rng.uniform(knob.low, knob.high)

    base = make_config(tmp_path, tmp_path / "out", weights="none")
    seen = set()
    for _ in range(25):
        values = draw(space, suggest)
        strategy = values["strategy"]
        seen.add(strategy)
        assert ("unfreeze_depth" in values) == (strategy in ("fine-tune", "discriminative", "layer-decay"))
        assert ("layer_decay" in values) == (strategy == "layer-decay")
        assert ("discriminative_factor" in values) == (strategy in ("discriminative", "gradual"))
        config = trial_config(base, values, groups, str(tmp_path / "trial"))
        again = _train_config(tmp_path, train_flags(config))
        assert again.plan == config.plan, values
        same_machine = replace(again.train, device=config.train.device)  # a machine's device is no flag of a plan
        assert (same_machine, again.data.augment, again.data.image_size) == (
            config.train, config.data.augment, config.data.image_size), values
    assert seen == {"feature-extraction", "fine-tune", "discriminative", "gradual", "layer-decay"}
    # Depth 2 of resnet18's 5 groups below fc: layer3 and layer4 train, the stem, layer1 and layer2 are frozen.
    frozen = trial_config(base, {"strategy": "fine-tune", "unfreeze_depth": 2}, groups, "x").plan.edits
    assert [e.module for e in frozen] == ["conv1", "bn1", "layer1", "layer2"] and all(e.frozen for e in frozen)


def test_head_only_draws_the_heads_knobs_on_plain_cached_features_and_the_grid_covers_the_space(groups, tmp_path):
    space = narrowed(default_space(True, len(groups)), ["epochs=2:3", "label-smoothing=0"])
    values = draw(space, lambda knob: knob.low)
    assert set(values) == {"base_lr", "weight_decay", "label_smoothing", "epochs"} and values["label_smoothing"] == 0
    config = trial_config(make_config(tmp_path, "o", augment="standard"), values, groups, "o")
    assert (config.plan.strategy, config.data.augment, config.plan.edits) == ("feature-extraction", "none", ())
    assert len(grid(space, points=3)) == 3 * 3 * 1 * 2  # LR x weight decay x smoothing x epochs
    full = grid(narrowed(default_space(False, len(groups)), ["strategy=feature-extraction,layer-decay",
                                                              "augment=none", "epochs=3"]), points=2)
    # feature extraction: LR x wd x smoothing; layer decay adds its depth (1 and 5) and its decay
    assert len(full) == 8 + 8 * 2 * 2


@pytest.mark.parametrize("spec, words", [
    ("colour=red", "no knob 'colour'"),
    ("base_lr=1e-2:1e-4", "above the high end"),
    ("base_lr=0:1e-2", "must be > 0"),
    ("weight_decay=0:0.1", "log scale"),
    ("epochs=0:3", "epochs must be >= 1"),
    ("epochs=2.5", "not a whole number"),
    ("label_smoothing=0:1", "label smoothing must be in [0, 1)"),
    ("strategy=fine-tune,sideways", "strategy must be among"),
    ("unfreeze_depth=1:9", "unfreeze depth must be in [1, 5]"),
    ("base_lr", "write KNOB=LOW:HIGH"),
    ("base_lr=nan", "not a finite number"),
])
def test_a_bad_space_is_one_line(groups, spec, words):
    with pytest.raises(UserError) as refused:
        narrowed(default_space(False, len(groups)), [spec])
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_head_only_refuses_the_trunks_knobs(groups):
    with pytest.raises(UserError, match="no knob 'strategy' with --head-only"):
        narrowed(default_space(True, len(groups)), ["strategy=fine-tune"])


# --- the pruner, the journal's bookkeeping ---------------------------------------------------------


def test_the_pruner_reports_every_epoch_and_stops_before_the_last_only():
    reported = []
    listener = PruneListener(lambda step, value: reported.append((step, value)) or True)
    listener.on_epoch_end(SimpleNamespace(epoch=3, epochs=3, val_accuracy=0.5))
    assert listener.stop_reason is None and reported == [(100, 0.5)]  # the last epoch: complete, not pruned
    listener.on_epoch_end(SimpleNamespace(epoch=1, epochs=3, val_accuracy=None))
    assert listener.stop_reason is None and len(reported) == 1  # nothing to compare without validation
    listener.on_epoch_end(SimpleNamespace(epoch=1, epochs=3, val_accuracy=0.25))
    assert (listener.stop_reason, listener.pruned_at, listener.last_value) == (PRUNED, 1, 0.25)
    assert reported[-1] == (33, 0.25)


def test_trials_of_different_lengths_are_compared_at_the_same_point_of_their_schedules():
    from engine.search.pruning import schedule_step

    assert schedule_step(4, 12) == schedule_step(1, 3) == schedule_step(2, 6) == 33
    assert schedule_step(6, 12) == schedule_step(5, 10) == 50 and schedule_step(12, 12) == 100


def test_trials_of_gone_workers_are_stale_live_ones_are_not(tmp_path):
    import optuna

    studies.quiet_optuna()
    study = optuna.create_study(storage=studies.open_storage(tmp_path / "s.journal"), direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    owners = [{"host": here, "pid": dead.pid, "start": None},  # ended on this host: stale
              {"host": here, "pid": os.getpid(), "start": studies.owner()["start"]},  # this very process: live
              {"host": "node-elsewhere", "pid": 1},  # another host, silent for an hour: stale
              {"host": "node-elsewhere", "pid": 1}]  # another host, heard from just now: live
    beats = [time.time(), time.time(), time.time() - 3600, time.time()]
    for found, beat in zip(owners, beats):
        trial = study.ask()
        trial.set_user_attr("owner", found)
        trial.set_user_attr("heartbeat", beat)
    study.ask()  # asked, but no owner recorded: its worker died inside the ask
    assert [t.number for t in studies.stale_trials(study)] == [0, 2, 4]
    studies.fail_trial(study, 0, "gone")
    assert studies.counts(study) == {"complete": 0, "pruned": 0, "failed": 1, "running": 4}


# --- the command ---------------------------------------------------------------------------------


def test_bad_flags_space_and_storage_are_one_line_exit_2(demo_dir, tmp_path, capsys):
    base = ["search", "--data", demo_dir, *TINY, "--trials", "2", "--out", tmp_path / "runs"]
    assert_refused(cli(capsys, *base, "--space", "base_lr=1:0.1"), 2, "above the high end")
    assert_refused(cli(capsys, *base, "--head-only", "--space", "augment=light"), 2, "--head-only")
    assert_refused(cli(capsys, *base, "--storage", tmp_path), 2, "is a folder")
    garbage = tmp_path / "garbage.journal"
    garbage.write_text("this is not a journal\n")
    assert_refused(cli(capsys, *base, "--storage", garbage), 2, "not an Optuna journal")
    assert_refused(cli(capsys, *base, "--trials", "0"), 2, "trials must be")
    assert_refused(cli(capsys, *base, "--workers", "0"), 2, "search workers must be")
    assert_refused(cli(capsys, *base, "--keep-runs", "--prune-runs"), 2, "not allowed with")
    # A storage holding a search of other settings is not mixed with this one.
    from engine.search.worker import load_study
    import app.cli_search as cli_search

    args = build_parser().parse_args([str(a) for a in [*base, "--head-only"]])
    load_study(cli_search.search_job(args))
    assert_refused(cli(capsys, *base), 2, "other settings", "head_only")
    assert not list((tmp_path / "runs").glob("trial-*"))  # nothing trained


@pytest.mark.slow
def test_two_workers_run_distinct_trials_and_json_gives_flags_that_train_the_same_plan(demo_dir, tmp_path, capfd):
    """--workers 2: the helper process and this one share the journal; every trial has its own number,
    draw and run folder. The JSON's flags, given to train, make the plan the best trial ran."""
    storage = tmp_path / "shared" / "s.journal"
    # The whole space narrowed to head-sized trials, so the helper starts at once (--head-only waits
    # for the first trial's features).
    # 16 trials (under a second each on cached features): enough for the helper process (seconds of
    # imports) to join before this one has run them all.
    rc, out, err = cli(capfd, "search", "--data", demo_dir, *TINY, "--trials", "16", "--workers", "2",
                       "--space", "strategy=feature-extraction", "--space", "augment=none", "--space", "epochs=1",
                       "--storage", storage, "--out", tmp_path / "runs", "--json")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert len(out.strip().splitlines()) == 1
    assert set(result) == {"best", "trials", "pruned", "storage"} and result["storage"] == str(storage)
    assert {"params", "value", "flags"} <= set(result["best"]) and result["trials"] + result["pruned"] == 16
    trials = _trials(storage)
    assert sorted(t.number for t in trials) == list(range(16))
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 16
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2  # both processes ran trials
    assert len([line for line in err.splitlines() if line.startswith("trial ")]) == 16
    assert "ETA" in err
    best = result["best"]
    run = json.loads((Path(best["run_dir"]) / "run.json").read_text())
    again = _train_config(demo_dir, best["flags"])
    assert again.plan == RunConfig.from_dict(run["config"]).plan
    assert best["value"] == max(t.value for t in trials if t.value is not None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_search_killed_mid_trial_continues_and_keeps_its_finished_trials(demo_dir, tmp_path, capsys):
    storage, runs = tmp_path / "runs" / "search.journal", tmp_path / "runs"
    argv = ["--data", str(demo_dir), *TINY, *HEAD, "--trials", "3", "--out", str(runs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "search", *argv], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:  # one trial done, the next one training
        if (runs / "trial-0001" / "run.json").exists():
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {t.number: (t.state.name, t.value) for t in _trials(storage)}
    assert before[0][0] == "COMPLETE" and before[1] == ("RUNNING", None)

    rc, out, err = cli(capsys, "search", *argv, "--prune-runs", "--json")  # --prune-runs: not a setting of the study
    assert rc == 0, err
    after = {t.number: t for t in _trials(storage)}
    assert (after[0].state.name, after[0].value) == before[0]  # kept as it was, not run again
    assert after[1].state.name == "FAIL" and "ended" in after[1].user_attrs["error"]
    assert json.loads((runs / "trial-0001" / "run.json").read_text())["status"] == "failed"
    result = json.loads(out)
    assert result["trials"] + result["pruned"] == 3
    assert len(after) == 4  # the lost trial, and two new ones to make up the three
    # Only the best trial's run folder stays, and the failed one's, which says what happened.
    assert {p.name for p in runs.glob("trial-*")} == {f"trial-{result['best']['trial']:04d}", "trial-0001"}


@pytest.mark.slow
def test_a_pruned_run_ends_after_its_epoch_as_a_stopped_run(demo_dir, tmp_path):
    from engine.config import PlanConfig
    from engine.training.trainer import fit

    config = make_config(demo_dir, tmp_path / "run", plan=PlanConfig(strategy="feature-extraction"), augment="none",
                         epochs=3, telemetry=False)
    result = fit(config, listeners=[PruneListener(lambda step, value: step >= 1)])
    assert (result.stopped, result.epochs_run) == (PRUNED, 1)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "stopped" and result.checkpoint is not None


@pytest.mark.slow
def test_every_trial_diverging_fails_the_search_with_exit_1(demo_dir, tmp_path, capsys):
    rc, out, err = cli(capsys, "search", "--data", demo_dir, *TINY, "--head-only", "--trials", "1",
                       "--space", "epochs=1", "--space", "base_lr=1e30", "--out", tmp_path / "runs", "--json")
    assert rc == 1, err
    assert "Traceback" not in err and "trials failed" in err.strip().splitlines()[-1]
    assert [t.state.name for t in _trials(tmp_path / "runs" / "search.journal")] == ["FAIL"]


# --- the cluster job ------------------------------------------------------------------------------


def test_cluster_script_search_writes_an_array_job_whose_tasks_share_the_journal(tmp_path, capsys):
    project = tmp_path / "my project" / "birds.tsproj.json"
    project.parent.mkdir()
    save_project(project, RunConfig(data=DataConfig(root=str(tmp_path / "data"))))
    script = tmp_path / "search.sbatch"
    assert main(["cluster-script", "--project", str(project), "--search", "--tasks", "6", "--trials", "40",
                 "--head-only", "--space", "epochs=5:20", "--time", "01:00:00", "--out", str(script)]) == 0
    assert "6 array task(s)" in capsys.readouterr().err
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    for option in ("--array=0-5", "--nodes=1", "--ntasks=1", "--gpus-per-task=1", "--requeue", "--signal=B:USR1@300"):
        assert f"#SBATCH {option}\n" in text
    # Every task runs the same search command: a fake python3 records what it was given.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {shlex.quote(str(tmp_path / 'args'))}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "77"}
    text = text.replace("source ", "# source ")  # the fake python3 must stay first on PATH
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["-m", "app.cli", "search"]
    parsed = build_parser().parse_args(args[2:])
    runs = project.parent / "runs" / "birds-search"
    assert (parsed.project, parsed.storage, parsed.out) == (str(project), str(runs / "search.journal"), str(runs))
    assert (parsed.trials, parsed.head_only, parsed.space) == (40, True, ["epochs=5:20"])
    # Refused before the queue: a space the project cannot search, a training job's flags, missing counts.
    for extra, words in ((["--tasks", "2", "--trials", "4", "--head-only", "--space", "strategy=gradual"], "no knob"),
                         (["--tasks", "2", "--trials", "4", "--nodes", "2"], "--nodes"),
                         (["--trials", "4"], "needs --tasks")):
        assert_refused(cli(capsys, "cluster-script", "--project", project, "--search", *extra), 2, words)
    assert_refused(cli(capsys, "cluster-script", "--project", project, "--nodes", "1", "--gpus-per-node", "1",
                       "--trials", "3"), 2, "only with --search")
