"""Distributed training: 2 CPU ranks (gloo), tiny generated data, few multi-process runs.

Two ranks are started twice: once by torch.multiprocessing (`two_rank_runs`, which records what
each rank sampled, opened for writing and ended with), once by `train --nproc 2` through
torchrun's launcher (`cli_runs`, with a 1-process run of the same recipe and a resume in one
process). Each of these runs is asserted on by several tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.distributed.process_group import SINGLE, ProcessGroup
from engine.errors import UserError
from engine.events import Callbacks
from engine.training.integrity import fingerprint
from engine.distributed.launch import without_option
from engine.distributed.sharding import interleaved, per_rank_batch_size, rank_batches, validation_share

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_RECIPE = ["--optimizer", "adamw", "--weight-decay", "0.01", "--lr", "conv1=1e-5", "--lr", "layer1=1e-5",
                    "--lr", "layer2=5e-5", "--lr", "layer3=1e-4", "--lr", "layer4=5e-4", "--lr", "fc=1e-3"]


# --- sharding, without processes --------------------------------------------------------------------

@pytest.mark.parametrize("n, batch, world", [(30, 8, 2), (31, 8, 2), (35, 8, 2), (33, 8, 2), (29, 12, 3), (7, 8, 4),
                                             (2, 4, 2), (38, 12, 4), (13, 4, 2)])
def test_every_sample_of_an_epoch_goes_to_exactly_one_rank(n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = [rank_batches(order, batch, rank, world) for rank in range(world)]
    seen = torch.cat([idx for share in shares for idx in share]).tolist()
    one_process = torch.cat(rank_batches(order, batch, 0, 1)).tolist()
    assert sorted(seen) == sorted(one_process)  # nothing repeated, nothing padded, nothing else left out
    assert len(seen) == len(set(seen))
    steps = len(rank_batches(order, batch, 0, 1))
    assert len(shares[0]) == steps  # rank 0 takes part in every global batch
    for step in range(len(shares[-1])):  # each step trains on one process's global batch
        together = sorted(torch.cat([share[step] for share in shares if step < len(share)]).tolist())
        assert together == sorted(rank_batches(order, batch, 0, 1)[step].tolist())
    if batch // world >= 3:  # no rank is left a single image that BatchNorm would make it hold back
        assert all(len(part) >= 2 for share in shares for part in share)


def test_validation_shares_put_back_in_order():
    n, world = 11, 3
    outputs = torch.arange(n * 2).view(n, 2) * 10
    shares = [outputs[list(validation_share(n, rank, world))] for rank in range(world)]
    assert sum(len(s) for s in shares) == n
    assert torch.equal(interleaved(shares), outputs)


def test_process_group_from_environment():
    assert ProcessGroup.from_env({}) is SINGLE
    group = ProcessGroup.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (group.world_size, group.rank, group.local_rank, group.is_main, group.is_distributed) == (4, 3, 1, False, True)
    with pytest.raises(UserError, match="inconsistent"):
        ProcessGroup.from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(UserError, match="whole numbers"):
        ProcessGroup.from_env({"WORLD_SIZE": "two"})
    # One process: no process group, no wrapper, no collective.
    module = torch.nn.Linear(2, 2)
    assert SINGLE.wrap(module, torch.device("cpu")) is module
    assert SINGLE.gather_objects("x") == ["x"]
    with SINGLE.started("cpu"):
        assert not torch.distributed.is_initialized()


def test_batch_size_is_global_and_split_evenly():
    assert per_rank_batch_size(32, 2) == 16
    with pytest.raises(UserError, match="multiple of 3"):
        per_rank_batch_size(32, 3)


def test_nproc_is_taken_out_of_the_command_for_the_ranks():
    assert without_option(["--data", "d", "--nproc", "2", "--nproc=3", "--epochs", "1"], "--nproc") == \
        ["--data", "d", "--epochs", "1"]


# --- data ---------------------------------------------------------------------------------------------

def _colour_dataset(root: Path, per_class: tuple[int, ...] = (16, 16, 15)) -> Path:
    """3 classes told apart by colour under heavy noise: learnable in two short epochs. 35 training
    images at a validation fraction of 0.25: the last batch of 8 is 3 images, all for rank 0."""
    rng = np.random.default_rng(0)
    for c, rgb in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class[c]):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return _colour_dataset(tmp_path_factory.mktemp("colours") / "data")


@pytest.fixture(scope="module")
def isolated_env(tmp_path_factory) -> dict[str, str]:
    """The caches of the processes these tests start (the autouse fixture sets them per test only)."""
    base = tmp_path_factory.mktemp("distributed_caches")
    return {"TORCH_HOME": str(base / "torch_home"), "TRANSFER_STUDIO_CACHE": str(base / "ts_cache"),
            "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- two ranks in torch.multiprocessing, recorded ----------------------------------------------------

def _written_path(event: str, args: tuple) -> str | None:
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1], args[2]
        writes = (mode and any(c in mode for c in "wax+")) or (
            mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        return str(args[0]) if writes else None
    if event in ("os.rename", "os.remove", "os.mkdir"):
        return str(args[0 if event != "os.rename" else 1])
    return None


class StartRecorder(Callbacks):
    def __init__(self, started: list) -> None:
        self.started = started

    def on_run_started(self, event) -> None:
        self.started.append(event)


def _rank_main(rank: int, world: int, port: int, configs: list[RunConfig], report_dir: str, env: dict) -> None:
    """One rank: train every config in turn, recording the batches it sampled, the files it
    opened for writing and the fingerprint of every tensor its model ended with."""
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import engine.training.batches
    import engine.distributed.sharding
    import engine.training.trainer

    written: list[str] = []
    sys.addaudithook(lambda event, args: written.append(p) if (p := _written_path(event, args)) else None)
    sampled: list[list[list[int]]] = []  # one list per call: the epoch's batches of this rank

    def recording(order, batch_size, r, w, original=engine.distributed.sharding.rank_batches):
        parts = original(order, batch_size, r, w)
        sampled.append([p.tolist() for p in parts])
        return parts

    engine.distributed.sharding.rank_batches = recording  # the image loader's sampler (RankEpochShuffle)
    engine.training.batches.rank_batches = recording  # cached features (FeatureBatches)
    loops = []

    class KeptLoop(engine.training.trainer.EpochLoop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loops.append(self)

    engine.training.trainer.EpochLoop = KeptLoop
    group = ProcessGroup.from_env()
    report = {"rank": rank, "runs": []}
    with group.started("cpu"):
        for config in configs:
            sampled.clear()
            started = []
            result = engine.training.trainer.fit(config, StartRecorder(started), group=group)
            optimizer = loops[-1].optimization.optimizer.state_dict()["state"]
            report["runs"].append({
                "result": result.summary(), "sampled": list(sampled), "global_step": loops[-1].global_step,
                "feature_note": started[0].feature_cache,
                "fingerprints": {k: fingerprint(v) for k, v in loops[-1].run.model.state_dict().items()},
                "optimizer": [fingerprint(t) for i in sorted(optimizer) for _, t in sorted(optimizer[i].items())]})
    report["written"] = written
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, colour_data, resnet18_weights_file, isolated_env):
    """Gradual unfreezing (layer4 joins at epoch 2) on images, then feature extraction on cached
    features, and again after AdaBN (features not kept per file), all from a weights file, in the
    same two ranks."""
    out = tmp_path_factory.mktemp("two_ranks")
    base = RunConfig(
        data=DataConfig(root=str(colour_data), image_size=32, augment="none", num_workers=0, val_fraction=0.25),
        model=ModelConfig(arch="resnet18", weights=str(resnet18_weights_file)),
        plan=PlanConfig(strategy="gradual", gradual_every=1),
        train=TrainConfig(epochs=2, batch_size=8, device="cpu", precision="fp32", schedule="constant"))
    configs = [replace(base, out_dir=str(out / "gradual")),
               replace(base, plan=PlanConfig(strategy="feature-extraction"),  # as loaded: one process would measure
                       train=replace(base.train, epochs=1, adapt_norm="off"), out_dir=str(out / "features")),
               replace(base, plan=PlanConfig(strategy="feature-extraction"),
                       train=replace(base.train, epochs=1, adapt_norm="on"), out_dir=str(out / "adapted"))]
    port = _free_port()
    torch.multiprocessing.spawn(_rank_main, args=(2, port, configs, str(out), isolated_env), nprocs=2, join=True)
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return configs, reports


def _one_process_batches(n: int, batch: int, seed: int, epoch: int) -> list[int]:
    from engine.data.dataset import epoch_order

    return sorted(torch.cat(rank_batches(epoch_order(n, seed, epoch), batch, 0, 1)).tolist())


@pytest.mark.slow
def test_each_epoch_of_a_recorded_run_sees_every_sample_once(two_rank_runs, colour_data):
    configs, reports = two_rank_runs
    train_images = 35  # 47 images, 12 of them validation
    for run in range(len(configs)):
        epochs = configs[run].train.epochs
        per_rank = [report["runs"][run]["sampled"] for report in reports]
        assert all(len(calls) == epochs for calls in per_rank)  # one sampling per epoch and rank
        for epoch in range(epochs):
            seen = [i for calls in per_rank for batch in calls[epoch] for i in batch]
            assert len(seen) == len(set(seen)) == train_images
            assert sorted(seen) == _one_process_batches(train_images, 8, 0, epoch + 1)
            # Half of every global batch; the last (3 images) whole: a part of one would not train.
            assert [len(b) for b in per_rank[0][epoch]] == [4, 4, 4, 4, 3]
            assert [len(b) for b in per_rank[1][epoch]] == [4, 4, 4, 4]


@pytest.mark.slow
def test_only_rank_0_writes_the_run_folder(two_rank_runs):
    configs, reports = two_rank_runs
    folders = [c.out_dir for c in configs]
    in_folders = [[p for p in r["written"] if any(p.startswith(f) for f in folders)] for r in reports]
    assert in_folders[1] == []
    for folder in folders:
        assert any(p.startswith(folder) and "checkpoint" in p for p in in_folders[0])
        assert any(p.startswith(folder) and "resume" in p for p in in_folders[0])
        assert any(p.startswith(folder) and "metrics.jsonl" in p for p in in_folders[0])
        record = json.loads(Path(folder, "run.json").read_text())
        assert record["status"] == "finished" and record["processes"]["world_size"] == 2


@pytest.mark.slow
def test_feature_extraction_leaves_every_frozen_tensor_bit_identical_on_both_ranks(two_rank_runs,
                                                                                   resnet18_weights_file):
    configs, reports = two_rank_runs
    loaded = torch.load(resnet18_weights_file, weights_only=True)
    trunk = {k: fingerprint(v) for k, v in loaded.items() if not k.startswith("fc.")}
    for report in reports:
        ended = report["runs"][1]["fingerprints"]
        assert {k: ended[k] for k in trunk} == trunk  # BatchNorm statistics included
        assert report["runs"][1]["result"]["integrity"]["changed"] == []
    assert reports[0]["runs"][1]["fingerprints"] == reports[1]["runs"][1]["fingerprints"]  # the head too
    # The trunk ran once per image over both ranks: rank 0 on 18 + 6 of the 35 + 12 images, rank 1 on the rest.
    notes = [r["runs"][1]["feature_note"] for r in reports]
    assert "trunk run on 47 of 47 image(s), 24 of them by this process" in notes[0]
    assert "trunk run on 47 of 47 image(s), 23 of them by this process" in notes[1]
    record = json.loads(Path(configs[1].out_dir, "run.json").read_text())
    ranks = record["processes"]["integrity"]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["checked"] == len(trunk)
    assert ranks[0]["digest"] == ranks[1]["digest"] and ranks[1]["changed"] == []


@pytest.mark.slow
def test_gradual_unfreezing_trains_what_it_unfreezes_after_the_ddp_rewrap(two_rank_runs, resnet18_weights_file):
    configs, reports = two_rank_runs
    loaded = {k: fingerprint(v) for k, v in torch.load(resnet18_weights_file, weights_only=True).items()}
    lines = [json.loads(x) for x in Path(configs[0].out_dir, "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["newly_unfrozen"] and "layer4" in lines[1]["newly_unfrozen"][0]
    ended = [r["runs"][0]["fingerprints"] for r in reports]
    assert ended[0] == ended[1]  # the rebuilt wrapper kept both ranks' weights the same
    # Rank 1 has no part of each epoch's last batch; it still steps (with a zero loss), so both
    # ranks took 2 x 5 steps and hold the same optimizer state.
    assert [r["runs"][0]["global_step"] for r in reports] == [10, 10]
    assert reports[0]["runs"][0]["optimizer"] == reports[1]["runs"][0]["optimizer"]
    layer4 = [k for k in loaded if k.startswith("layer4.") and k.endswith((".weight", ".bias"))]
    assert all(ended[0][k] != loaded[k] for k in layer4)  # every unfrozen parameter trained
    assert all(ended[0][k] == loaded[k] for k in loaded if k.startswith(("conv1.", "layer1.", "layer3.")))


# --- train --nproc 2 through torchrun -------------------------------------------------------------------

def _train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "app", "train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, colour_data, resnet18_weights_file, isolated_env):
    """The reference recipe as 2 processes and as 1 (same global batch), then the 2-process run
    continued in 1 process for a third epoch, and the 1-process run in 2 processes."""
    out = tmp_path_factory.mktemp("cli")
    common = ["--data", str(colour_data), "--model", "resnet18", "--weights", str(resnet18_weights_file),
              "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--device", "cpu", "--augment", "none",
              "--val-fraction", "0.5", "--schedule", "constant", "--adapt-norm", "--no-telemetry", *REFERENCE_RECIPE]
    two = _train([*common, "--nproc", "2", "--events-jsonl", "--out", str(out / "two")], isolated_env)
    one = _train([*common, "--out", str(out / "one"), "--json"], isolated_env)
    resumed = _train(["--resume", str(out / "two"), "--epochs", "3", "--json"], isolated_env)
    resumed_in_two = _train(["--resume", str(out / "one"), "--epochs", "3", "--nproc", "2", "--json"], isolated_env)
    return out, two, one, resumed, resumed_in_two


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_reach_the_accuracy_of_one(cli_runs):
    out, two, one, _, _ = cli_runs
    assert two.returncode == 0, two.stderr[-2000:]
    assert one.returncode == 0, one.stderr[-2000:]
    acc_two, acc_one = _metrics(out / "two")[1]["val_accuracy"], _metrics(out / "one")[-1]["val_accuracy"]
    assert acc_one >= 0.9  # the comparison means something: both learned
    assert abs(acc_two - acc_one) <= 0.02
    confusion = _metrics(out / "two")[1]["confusion_matrix"]
    assert sum(map(sum, confusion)) == 24  # every validation image counted once over both ranks
    # Rank 0 wrote every validation image's prediction, in the validation set's order, as one process does.
    assert _predicted_paths(out / "two") == _predicted_paths(out / "one")
    assert len(_predicted_paths(out / "two")) == 24


def _predicted_paths(folder: Path) -> list[str]:
    import csv

    with open(folder / "val_predictions.csv", newline="") as fh:
        return sorted(row["path"] for row in csv.DictReader(fh))


@pytest.mark.slow
def test_rank_0_alone_streams_events_as_json_lines(cli_runs):
    _, two, _, _, _ = cli_runs
    events = [json.loads(line) for line in two.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("started") == 1 and kinds.count("result") == 1 and kinds[-1] == "result"
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert "batch" in kinds and events[-1]["epochs_run"] == 2
    assert two.stderr.count("best val accuracy") == 1  # progress from rank 0 only
    assert "Traceback" not in two.stderr


@pytest.mark.slow
def test_a_two_process_run_continues_in_one_process(cli_runs):
    out, two, _, resumed, _ = cli_runs
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = _metrics(out / "two")
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert json.loads(resumed.stdout.splitlines()[-1])["epochs_run"] == 3
    # run.json describes the run as last started: one process now.
    assert "processes" not in json.loads((out / "two" / "run.json").read_text())
    events = [json.loads(line) for line in two.stdout.splitlines()]
    assert events[-1]["epochs_run"] == 2  # the two processes' part


@pytest.mark.slow
def test_a_one_process_run_continues_in_two(cli_runs):
    out, _, one, _, resumed_in_two = cli_runs
    assert resumed_in_two.returncode == 0, resumed_in_two.stderr[-2000:]
    assert [m["epoch"] for m in _metrics(out / "one")] == [1, 2, 3]
    assert json.loads(resumed_in_two.stdout.splitlines()[-1])["epochs_run"] == 3
    assert json.loads((out / "one" / "run.json").read_text())["processes"]["world_size"] == 2


def _failure(folder: Path, rank: int, exitcode: int, line: str | None = None, monkeypatch=None):
    """torchrun's record of a failed rank; `line`: the error the rank reported (engine.distributed.launch.report_error)."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from engine.distributed.launch import report_error

    error_file = folder / f"error_{rank}.json"
    if line is not None:
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        report_error(line)
        monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_a_failure_on_another_rank_is_one_line_naming_it(tmp_path, capsys):
    from engine.distributed.launch import _failure_code

    log = tmp_path / "job_1" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("a warning\ntransfer-studio: error: no cuda:1: this machine has 1 CUDA device(s)\n")
    failures = {0: _failure(tmp_path, 0, -15), 1: _failure(tmp_path, 1, 2)}
    assert _failure_code(failures, tmp_path) == 2
    assert capsys.readouterr().err == "transfer-studio: error: rank 1: no cuda:1: this machine has 1 CUDA device(s)\n"
    assert _failure_code({0: _failure(tmp_path, 0, 1)}, tmp_path) == 1
    assert capsys.readouterr().err == ""  # rank 0 printed its own line on the terminal


def test_the_launcher_names_the_rank_whose_failure_came_first(tmp_path, capsys, monkeypatch):
    """A rank-local failure makes the others fail in their next collective ("another process of
    this run failed"): the launcher shows the rank with an error of its own, else a signal."""
    from engine.distributed.launch import ANOTHER_PROCESS_FAILED, _failure_code

    lost = f"{ANOTHER_PROCESS_FAILED} (Connection closed by peer [127.0.0.1]:8576)"
    nan = "the loss became nan at epoch 1, step 3 (try a lower LR)"
    folder = tmp_path / "errors"
    folder.mkdir()
    capsys.readouterr()
    # Rank 0's line is on the terminal already; the launcher reads it back from its error file.
    failures = {0: _failure(folder, 0, 1, lost, monkeypatch), 1: _failure(folder, 1, 1, nan, monkeypatch)}
    capsys.readouterr()
    assert _failure_code(failures, tmp_path) == 1
    assert capsys.readouterr().err == f"transfer-studio: error: rank 1: {nan}\n"
    # Rank 0 failed first: its line is the one, nothing more printed (rank 1's only names rank 0's).
    failures = {0: _failure(folder, 0, 2, "no such folder", monkeypatch),
                1: _failure(folder, 1, 2, "rank 0: no such folder", monkeypatch)}
    capsys.readouterr()
    assert _failure_code(failures, tmp_path) == 2
    assert capsys.readouterr().err == ""
    # Killed by the OOM killer: that is all there is to say, and more than rank 0's lost connection.
    failures = {0: _failure(folder, 0, 1, lost, monkeypatch), 1: _failure(folder, 1, -9)}
    capsys.readouterr()
    assert _failure_code(failures, tmp_path) == 1
    assert capsys.readouterr().err == "transfer-studio: error: rank 1: killed by signal 9 (SIGKILL)\n"
    # Every rank killed: the launcher's own SIGTERMs come after the signal that started it.
    assert _failure_code({0: _failure(folder, 0, -15), 1: _failure(folder, 1, -9)}, tmp_path) == 1
    assert capsys.readouterr().err == "transfer-studio: error: rank 1: killed by signal 9 (SIGKILL)\n"
    assert _failure_code({0: _failure(folder, 0, -15), 1: _failure(folder, 1, -15)}, tmp_path) == 1
    assert capsys.readouterr().err == "transfer-studio: error: rank 0: killed by signal 15 (SIGTERM)\n"
    # Rank 0 ended with a traceback (no line): that, not the SIGTERM the launcher then sent rank 1.
    assert _failure_code({0: _failure(tmp_path, 0, 1), 1: _failure(folder, 1, -15)}, tmp_path) == 1
    assert capsys.readouterr().err == ""


def test_a_collective_failing_because_another_rank_is_gone_is_one_line():
    from engine.distributed.process_group import lost_processes_fail_the_run
    from engine.errors import RunFailed

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:8576. This is typically caused by a remote worker crashing. GLHF!")
    with pytest.raises(RunFailed) as failed:
        with lost_processes_fail_the_run(ProcessGroup(world_size=2, rank=0)):
            raise gloo
    assert str(failed.value) == "another process of this run failed (Connection closed by peer [127.0.0.1]:8576)"
    for group, error in ((SINGLE, gloo), (ProcessGroup(world_size=2, rank=0), RuntimeError("a bug"))):
        with pytest.raises(RuntimeError) as kept:  # one process, or not the backend: the traceback is needed
            with lost_processes_fail_the_run(group):
                raise error
        assert kept.value is error


NAN_ON_RANK_1 = "the loss became nan at epoch 1, step 1 (try a lower LR)"


def _train_where_rank_1_fails_alone() -> int:
    """A rank of `python -m tests.test_distributed train ...`: the CLI, its fit replaced by one that
    fails on rank 1 alone while rank 0 waits for it in a collective."""
    import app.cli
    import engine.training.trainer
    from engine.errors import TrainingDiverged

    def fit(config, callbacks, control, resume, group):
        if group.rank == 1:
            raise TrainingDiverged(NAN_ON_RANK_1)
        group.barrier()  # rank 1 is gone: gloo's "Connection closed by peer" (or the launcher's SIGTERM)
        raise AssertionError("rank 0 passed a barrier rank 1 never reached")

    engine.training.trainer.fit = fit
    return app.cli.main(sys.argv[1:])


@pytest.mark.slow
def test_train_nproc_names_the_rank_that_failed_alone(tmp_path, colour_data, isolated_env):
    args = ["train", "--data", str(colour_data), "--weights", "none", "--epochs", "1", "--out", str(tmp_path / "r")]
    code = f"import sys; from engine.distributed.launch import launch_local; sys.exit(launch_local(2, 'tests.test_distributed', {args!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **isolated_env})
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and all(line.startswith("transfer-studio: error: ") for line in lines)
    assert lines[-1] == f"transfer-studio: error: rank 1: {NAN_ON_RANK_1}"
    assert len(lines) == 1 or lines[0].startswith("transfer-studio: error: another process of this run failed (")


@pytest.mark.slow
def test_bad_distributed_input_is_one_line_and_exit_2(tmp_path, colour_data, isolated_env):
    for args, message in ((["--nproc", "2", "--batch-size", "7"], "multiple of 2"),
                          (["--nproc", "2", "--weights", str(tmp_path / "missing.pth")], "missing.pth"),
                          (["--sync-bn", "--device", "cpu", "--epochs", "1", "--events-jsonl"], "--sync-bn needs CUDA"),
                          (["--nproc", "2", "--compile"], "--compile")):
        proc = _train(["--data", str(colour_data), "--weights", "none", "--out", str(tmp_path / "r"), *args],
                      isolated_env)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("transfer-studio: error:")
        assert message in proc.stderr and "Traceback" not in proc.stderr
        if "--events-jsonl" in args:  # a reader of the event stream learns it too
            last = json.loads(proc.stdout.splitlines()[-1])
            assert last["event"] == "failed" and message in last["error"]


def test_ranks_holding_different_frozen_tensors_fail_the_run():
    """Rank 1 reports its own check intact, but its frozen tensors are not rank 0's: every rank
    gets a report that names it, and the integrity listener ends the run."""
    from types import SimpleNamespace

    from engine.distributed.across_ranks import fingerprints_digest, integrity_across_ranks
    from engine.errors import FrozenTensorsChanged
    from engine.events import IntegrityReport
    from engine.training.integrity import FreezeIntegrity

    class RankZeroOfTwo(ProcessGroup):
        def gather_objects(self, value):
            other = {**value, "rank": 1, "digest": fingerprints_digest({"conv1.weight": "0" * 32})}
            return [value, other]

    group = RankZeroOfTwo(world_size=2, rank=0)
    mine = {"conv1.weight": fingerprint(torch.ones(3))}
    report, ranks = integrity_across_ranks(group, IntegrityReport(epoch=1, checked=1), mine)
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["digest"] == fingerprints_digest(mine)
    assert report.changed == ("(rank 1 holds other frozen tensors than rank 0)",) and not report.intact
    listener = FreezeIntegrity(torch.nn.Linear(1, 1))
    with pytest.raises(FrozenTensorsChanged, match="rank 1"):
        listener.on_epoch_end(SimpleNamespace(integrity=report))
    same, _ = integrity_across_ranks(RankZeroOfTwo(world_size=2, rank=0), IntegrityReport(epoch=1, checked=1),
                                     {"conv1.weight": "0" * 32})
    assert same.intact


@dataclass(frozen=True)
class _RankOfTwo(ProcessGroup):
    """One rank of two, without processes: the other rank's answers are given (whether it
    stopped during set-up; no error to start with), and every value gathered is recorded."""

    other_stopped: bool = False
    gathered: list = field(default_factory=list)

    def gather_objects(self, value):
        self.gathered.append(value)
        other = self.other_stopped if isinstance(value, bool) else None
        return [value, other] if self.is_main else [other, value]

    def barrier(self) -> None:
        pass


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("stopped_here", [False, True])
def test_a_stop_during_set_up_on_one_rank_stops_every_rank_before_ddp(monkeypatch, tmp_path, rank, stopped_here):
    """A rank that saw Stop in the control file while it decoded, and one that had finished setting
    up, both learn it before the DDP wrapper (whose constructor waits for every rank) is built."""
    import engine.training.trainer
    from engine.errors import Stopped

    def set_up(*args, **kwargs):
        if stopped_here:
            raise Stopped
        return object()

    def no_loop(*args, **kwargs):
        raise AssertionError("the epoch loop and its DDP wrapper were built although a rank stopped")

    monkeypatch.setattr(engine.training.trainer, "set_up", set_up)
    monkeypatch.setattr(engine.training.trainer, "EpochLoop", no_loop)
    group = _RankOfTwo(world_size=2, rank=rank, other_stopped=not stopped_here)
    config = RunConfig(data=DataConfig(root=str(tmp_path / "data")), model=ModelConfig(arch="resnet18", weights="none"),
                       train=TrainConfig(epochs=1, batch_size=8, device="cpu"), out_dir=str(tmp_path / "run"))
    result = engine.training.trainer.fit(config, group=group)
    assert result.stopped == "user" and result.epochs_run == 0
    assert group.gathered[-1] is stopped_here  # this rank told the other whether it stopped


def test_rank_weights_make_the_ddp_mean_the_global_batch_mean():
    """DDP averages the ranks' gradients; each rank's loss is weighted by its part of the global
    batch, so a short last batch split 3 + 0 (or 2 + 1) counts as one process's mean over it."""
    from engine.distributed.sharding import global_batch_size

    n, batch, world = 35, 8, 2
    order = torch.arange(n)
    assert [global_batch_size(n, batch, s) for s in range(1, 6)] == [8, 8, 8, 8, 3]
    losses = torch.rand(n)
    for step in range(5):
        parts = [rank_batches(order, batch, r, world) for r in range(world)]
        means = [losses[p[step]].mean() * len(p[step]) * world / global_batch_size(n, batch, step + 1)
                 if step < len(p) else torch.zeros(()) for p in parts]
        global_mean = losses[rank_batches(order, batch, 0, 1)[step]].mean()
        assert torch.allclose(sum(means) / world, global_mean)


@pytest.mark.slow
def test_adapted_trunk_features_validate_every_image_once(two_rank_runs, isolated_env, tmp_path):
    """After AdaBN each rank computes the whole validation set's features and takes its share of
    them: all 12 images counted, as one process counts them; rank 0 alone saves the feature set
    under the dataset's key, and saves all of it (a later one-process run loads it)."""
    from engine.training.trainer import fit

    configs, reports = two_rank_runs
    two = _metrics(Path(configs[2].out_dir))
    assert sum(map(sum, two[0]["confusion_matrix"])) == 12
    assert len(_predicted_paths(Path(configs[2].out_dir))) == 12
    fit(replace(configs[2], out_dir=str(tmp_path / "one")))
    one = _metrics(tmp_path / "one")
    assert two[0]["confusion_matrix"] == one[0]["confusion_matrix"]
    assert two[0]["val_loss"] == pytest.approx(one[0]["val_loss"], rel=1e-4)
    features = Path(isolated_env["TRANSFER_STUDIO_CACHE"]) / "features"
    assert [p for p in reports[1]["written"] if p.startswith(str(features))] == []
    saved = [torch.load(path, weights_only=True) for path in features.glob("*.pt")]
    assert len(saved) == 2 and all(len(s["val"][1]) == 12 and len(s["train"][1]) == 35 for s in saved)


@pytest.mark.slow
def test_two_ranks_train_the_head_as_one_process_does(two_rank_runs, tmp_path):
    """On cached features (no BatchNorm in play, fp32) two ranks and one process take the same
    steps: the same losses, up to float summation order."""
    from engine.training.trainer import fit

    configs, _ = two_rank_runs
    fit(replace(configs[1], out_dir=str(tmp_path / "one")))
    one, two = _metrics(tmp_path / "one"), _metrics(Path(configs[1].out_dir))
    for a, b in zip(one, two, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["confusion_matrix"] == b["confusion_matrix"]


if __name__ == "__main__":  # a rank of test_train_nproc_names_the_rank_that_failed_alone
    sys.exit(_train_where_rank_1_fails_alone())


def test_fewer_training_images_than_two_per_process_are_refused(tmp_path):
    """A rank left without any image takes no step at all, and a collective the others enter
    (the control file's vote) would wait for it forever: refused in one line instead."""
    from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from engine.data.demo import write_demo_dataset
    from engine.distributed.process_group import ProcessGroup
    from engine.errors import UserError
    from engine.events import Callbacks, TrainingControl
    from engine.training.setup import set_up

    data = write_demo_dataset(tmp_path / "data", classes=2, per_class=2, size=32, seed=0)
    config = RunConfig(data=DataConfig(root=str(data), image_size=32, val_fraction=0.25),
                       model=ModelConfig(weights="none"), train=TrainConfig(device="cpu", batch_size=4),
                       out_dir=str(tmp_path / "run"))
    with pytest.raises(UserError, match="2 processes need at least 4 training images; this dataset has 2"):
        set_up(config, None, Callbacks(), TrainingControl(), fresh=True, group=ProcessGroup(world_size=2, rank=0))
