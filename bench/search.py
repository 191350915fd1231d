#!/usr/bin/env python3
"""Search: head-only TPE trials with median pruning against an exhaustive grid over the same space.

    .venv/bin/python bench/search.py [--trials 50] [--points 3] [--out bench/out]
    .venv/bin/python bench/search.py --data DIR --trials 5 --points 2 --epochs 1:2 --size 32   # a smoke run

Default case (issue 26): scikit-learn's digits (1,797 real handwritten digits, scaled up; train/ and
val/ as bench/run_benchmarks.py writes them), resnet18 from a stand-in weights file, 64 px, the
head-only space (base LR, weight decay, label smoothing, epochs 3..12), every trial a full `fit` as
a search trial (engine.training.search_trial: same proofs as `train`), with the settings `search`
gives its trials (no telemetry, no TensorBoard) and its default folders (a pruned trial's deleted).
The trunk's features (and, for --adapt-norm auto, the adapted statistics) are computed once by a
warm-up run, not counted; then the TPE search (engine.search.worker, its own journal) and the grid
(engine.search.space.grid, POINTS values per knob, each a trial `fit` with the warm-up's measured
--adapt-norm choice, as the search's later trials take the first's) run on the cached features.
Reports the best value of each, the gap, trial counts, seconds per trial, and whether every kept
trial folder read the cached features. Prints one JSON line and a markdown table for
docs/benchmarks.md; writes OUT/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as rb  # noqa: E402 - the round-1 pieces: digits, the weights file; adds the root to sys.path
from engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from engine.runs.run_folder import RunFolder  # noqa: E402
from engine.search.space import default_space, grid, narrowed, stage_groups_below_head  # noqa: E402
from engine.search.worker import SearchJob, load_study, run_worker, trial_settings  # noqa: E402
from engine.training.search_trial import SearchTrial  # noqa: E402
from engine.training.shared_parts import SharedParts  # noqa: E402
from engine.training.trainer import fit  # noqa: E402


def dataset(args, out: Path) -> Path:
    if args.data:
        return Path(args.data)
    try:
        return rb.digits_dataset(out / f"digits-{args.size}", size=args.size)
    except ImportError:
        raise SystemExit("bench/search.py: scikit-learn is not installed (its digits are the default data); "
                         "install it, or give --data DIR") from None


def base_config(data: Path, weights: str, args, out_dir: Path) -> RunConfig:
    return trial_settings(RunConfig(data=DataConfig(root=str(data), image_size=args.size),
                                    model=ModelConfig("resnet18", weights),
                                    train=TrainConfig(batch_size=32, device=args.device, seed=args.seed),
                                    out_dir=str(out_dir)))


def cached(run_dir: str | Path) -> bool:
    return "loaded from the disk cache" in (RunFolder(run_dir).read_run().feature_cache or "")


def tpe(job: SearchJob) -> dict:
    shutil.rmtree(job.base.out_dir, ignore_errors=True)
    outcomes = []

    def on_trial(outcome) -> None:
        outcomes.append(outcome)
        print(f"  tpe trial {outcome.number}: {outcome.state} {outcome.value} ({outcome.seconds:.1f} s)", flush=True)

    start = time.perf_counter()
    run_worker(load_study(job), job, on_trial=on_trial)
    seconds = time.perf_counter() - start
    values = [o.value for o in outcomes if o.state == "complete"]
    folders = [f for f in (job.run_dir(o.number) for o in outcomes) if (f / "run.json").exists()]  # pruned: deleted
    return {"seconds": seconds, "trials": len(outcomes), "complete": len(values),
            "pruned": sum(o.state == "pruned" for o in outcomes), "failed": sum(o.state == "failed" for o in outcomes),
            "best": max(values) if values else None, "values": [o.value for o in outcomes],
            "states": [o.state for o in outcomes], "trial_seconds": [o.seconds for o in outcomes],
            "all_cached": all(cached(f) for f in folders), "folders_checked": len(folders)}


def exhaustive(job: SearchJob, points: int, adapt_norm: str | None) -> dict:
    out = Path(job.base.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    combos = grid(job.space, points)
    values, seconds_each, all_cached = [], [], True
    trial = SearchTrial(SharedParts())
    start = time.perf_counter()
    for i, combo in enumerate(combos):
        t = time.perf_counter()
        config = job.config(combo, i, adapt_norm)
        result = fit(config, scan=trial.parts.scan(config), trial=trial)
        seconds_each.append(time.perf_counter() - t)
        values.append(result.best_val_accuracy)
        all_cached &= cached(result.run_dir)
        print(f"  grid {i + 1}/{len(combos)}: {result.best_val_accuracy} ({seconds_each[-1]:.1f} s) {combo}",
              flush=True)
    return {"seconds": time.perf_counter() - start, "trials": len(combos), "best": max(values), "values": values,
            "trial_seconds": seconds_each, "all_cached": all_cached}


def table(report: dict) -> str:
    t, g = report["tpe"], report.get("grid")
    lines = ["| search | trials (complete / pruned) | best val accuracy | seconds (per trial, median) |",
             "|---|---|---|---|",
             f"| TPE + median pruning | {t['trials']} ({t['complete']} / {t['pruned']}) | {t['best']:.4f} | "
             f"{t['seconds']:.0f} s ({statistics.median(t['trial_seconds']):.2f} s) |"]
    if g:
        lines.append(f"| grid, {report['args']['points']} values per knob | {g['trials']} ({g['trials']} / 0) | "
                     f"{g['best']:.4f} | {g['seconds']:.0f} s ({statistics.median(g['trial_seconds']):.2f} s) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(rb.ROOT / "bench" / "out"))
    parser.add_argument("--data", help="a dataset folder (default: scikit-learn's digits)")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--points", type=int, default=3, help="grid values per numeric knob")
    parser.add_argument("--epochs", default="3:12", help="the epochs knob's range (as --space epochs=...)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the split's, and the TPE sampler's")
    parser.add_argument("--no-grid", action="store_true", help="the TPE search alone")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(rb.ROOT)
    # A fresh feature cache: the warm-up computes the trunk's features, every trial after it reads them.
    os.environ["TRANSFER_STUDIO_CACHE"] = tempfile.mkdtemp(prefix="ts-bench-search-cache-")
    data = dataset(args, out)
    weights = str(rb.weights_file(out / "resnet18-weights.pth"))
    groups = stage_groups_below_head("resnet18", args.size)
    space = narrowed(default_space(True, len(groups)), [f"epochs={args.epochs}"])

    def job(name: str) -> SearchJob:
        folder = out / f"search-{name}"
        return SearchJob(base=base_config(data, weights, args, folder), space=space, stage_groups=groups,
                         trials=args.trials, storage=folder / "search.journal", seed=args.seed)

    warm = job("warmup")
    shutil.rmtree(warm.base.out_dir, ignore_errors=True)
    start = time.perf_counter()
    first = fit(warm.config({"epochs": int(space.knob("epochs").low)}, 0))
    warm_run = RunFolder(first.run_dir).read_run()
    warmup = {"seconds": time.perf_counter() - start, "feature_cache": warm_run.feature_cache,
              "norm_statistics": warm_run.norm_choice.line if warm_run.norm_choice else None}
    measured = warm_run.norm_choice if warm_run.norm_choice and warm_run.norm_choice.measured else None
    print(f"warm-up (trunk features computed): {warmup['seconds']:.1f} s; {warmup['feature_cache']}", flush=True)

    report = {"args": vars(args), "space": space.describe(), "warmup": warmup, "tpe": tpe(job("tpe"))}
    if not args.no_grid:
        report["grid"] = exhaustive(job("grid"), args.points,
                                    None if measured is None else "on" if measured.adapted else "off")
        t, g = report["tpe"], report["grid"]
        report["gap"] = g["best"] - t["best"] if t["best"] is not None else None  # > 0: the grid found better
        reached = [i for i, v in enumerate(t["values"]) if v is not None and v >= g["best"]]
        report["tpe_trials_to_grid_best"] = reached[0] + 1 if reached else None
    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"
    report["machine"] = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                         f"{torch.__version__}, {device}")
    (out / "search.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k in ("gap", "tpe_trials_to_grid_best")}
                     | {"tpe_best": report["tpe"]["best"], "grid_best": report.get("grid", {}).get("best")}))
    print(f"\n{report['machine']}; {data}, {args.size} px, space {space.describe()}\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
