#!/usr/bin/env python3
"""Round 2 on a CUDA machine, in one call (device time is scarce):

    python3 bench/gpu_round2.py --out DIR

1. resnet50 fine-tuning at 224 px: the plain loop, Transfer Studio's defaults (telemetry and
   freeze integrity on), the same with telemetry off, and the same epoch loop fed with synthetic
   tensors already on the GPU (how much of the loop's speed the real input pipeline keeps);
2. large JPEGs (4032x3024) decoded for the cache: Pillow on all CPU cores (draft mode) against
   nvJPEG on the GPU (engine/data/gpu_decode.py), with the pixel difference between the two;
3. bench/gpu_checks.py: fp16 + gradual unfreezing, feature extraction, resume, export parity;
4. (round 3) on a machine with two GPUs or more: bench/distributed.py with nccl, 1 process against
   N with SyncBatchNorm (`train --nproc N --sync-bn`), images/s and validation accuracy.

Round 3 adds nothing else to run: `ours` measures the defaults as they are now (the loss read once
an epoch, fused AdamW), which have never run on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.runs.run_folder import RunFolder  # noqa: E402
from gpu_bench import make_dataset, ours, run  # noqa: E402


def synthetic(data: str, out: str, epochs: int, batch_size: int, device: str = "cuda") -> dict:
    """The training run `ours` makes, with the batch source swapped for tensors on the GPU."""
    from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
    from engine.data.dataset import normalize_batch
    from engine.events import Callbacks, TrainingControl
    from engine.model.checkpoint import BackgroundSaver
    from engine.training.setup import set_up
    from engine.training.trainer import EpochLoop

    config = RunConfig(data=DataConfig(root=data, image_size=224, augment="standard", num_workers=8),
                       model=ModelConfig("resnet50", "none"), plan=PlanConfig(strategy="fine-tune", base_lr=1e-3),
                       train=TrainConfig(epochs=epochs, batch_size=batch_size, device=device, schedule="constant"),
                       out_dir=out)
    run = set_up(config, None, Callbacks(), TrainingControl(), fresh=True)
    real = run.batches

    class SyntheticBatches:
        steps_per_epoch = real.steps_per_epoch
        module_to_train = real.module_to_train

        def __init__(self):
            g = torch.Generator(device=run.device).manual_seed(0)
            self.x = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=run.device, generator=g)
            self.y = torch.randint(0, len(run.scan.class_names), (batch_size,), device=run.device, generator=g)

        def _batch(self):
            x = normalize_batch(self.x, run.prep).contiguous(memory_format=torch.channels_last)
            return x, self.y

        def train_batches(self, epoch):
            for _ in range(self.steps_per_epoch):
                yield self._batch()

        def val_batches(self):
            for _ in range(max(1, len(run.scan.val) // batch_size)):
                yield self._batch()

    saver = BackgroundSaver()
    try:
        EpochLoop(replace(run, batches=SyntheticBatches()), Callbacks(), TrainingControl(), saver, None).train(
            time.perf_counter())
    finally:
        saver.close()
    metrics = RunFolder(out).read_epochs()
    return {"images_per_second_after_first": float(np.mean([m.images_per_second for m in metrics[1:]])),
            "epoch_seconds": [m.seconds for m in metrics]}


def shutdown_diagnosis(out: Path) -> dict:
    """fit() returning with the next epoch's batches prefetched (as before the last_epoch rule)
    and without: the time fit takes to return after its own clock stopped. A watchdog dumps every
    thread's stack if the first call hangs."""
    import faulthandler

    from engine.training import batches
    from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
    from engine.training.trainer import fit

    data = Path("/tmp/ts-gpu-small")
    if not data.exists():
        make_dataset(data, 128, 16, 288)
    result = {}
    for name, last_epoch_rule in (("prefetch_past_last_epoch", False), ("last_epoch_rule", True)):
        original = batches.ImageBatches.__init__

        def init(self, *a, _rule=last_epoch_rule, **k):
            original(self, *a, **k)
            if not _rule:
                self.last_epoch = None

        batches.ImageBatches.__init__ = init
        config = RunConfig(data=DataConfig(root=str(data), image_size=224, augment="standard", num_workers=8),
                           model=ModelConfig("resnet50", "none"), plan=PlanConfig(strategy="fine-tune", base_lr=1e-3),
                           train=TrainConfig(epochs=2, batch_size=128, device="cuda"), out_dir=str(out / name))
        faulthandler.dump_traceback_later(45, exit=False, file=sys.stderr)
        start = time.perf_counter()
        found = fit(config)
        faulthandler.cancel_dump_traceback_later()
        batches.ImageBatches.__init__ = original
        result[name] = {"fit_call_seconds": time.perf_counter() - start, "fit_seconds": found.seconds}
    return result


def _write_photo(job):
    path, seed = job
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:3024, 0:4032].astype(np.float32)
    base = np.stack([xx / 16 + rng.uniform(0, 255), yy / 12 + rng.uniform(0, 255), (xx + yy) / 28], -1) % 255
    noise = rng.normal(0, 12, base.shape)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def decode_bench(folder: Path, count: int, side: int, device: str = "cuda") -> dict:
    from engine.data.gpu_decode import decode_jpegs_resized
    from engine.data.images import decode_resized

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.jpg" for i in range(count)]
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_photo, [(str(p), i) for i, p in enumerate(paths)])
    result = {"images": count, "size": "4032x3024 JPEG", "side": side,
              "megabytes": sum(p.stat().st_size for p in paths) / 1e6}
    for threads in (8, 16):
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            cpu = list(pool.map(lambda p: decode_resized(p, side), paths))
        result[f"cpu_pillow_draft_{threads}_threads_images_per_second"] = count / (time.perf_counter() - start)
    device = torch.device(device)
    decode_jpegs_resized(paths[:4], side, device)  # nvJPEG's first call initialises it
    for batch in (8, 32):
        start = time.perf_counter()
        gpu = []
        for i in range(0, count, batch):
            gpu += decode_jpegs_resized(paths[i:i + batch], side, device)
        result[f"gpu_nvjpeg_batch_{batch}_images_per_second"] = count / (time.perf_counter() - start)
    result["shapes_agree"] = all(a.shape == b.shape for a, b in zip(cpu, gpu))
    result["mean_abs_pixel_difference"] = float(np.mean([(a.float() - b.float()).abs().mean().item()
                                                         for a, b in zip(cpu, gpu) if a.shape == b.shape]))
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--train-per-class", type=int, default=896)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--synthetic-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default="/tmp/ts-gpu-data", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--diagnosis-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", default="plain,ours,ours_no_telemetry,synthetic,decode,ddp,checks",
                   help="which parts to run, comma-separated (also: ours_cudnn_benchmark, shutdown)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if args.diagnosis_only:
        print(json.dumps(shutdown_diagnosis(out / "shutdown")))
        return 0
    if args.synthetic_only:
        print(json.dumps(synthetic(str(data), str(out / "synthetic"), args.epochs, args.batch_size, args.device)))
        return 0
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "cpus": os.cpu_count()}
    t = time.perf_counter()
    make_dataset(data, args.train_per_class, 64, 288)
    result["dataset"] = {"train": 8 * args.train_per_class, "val": 8 * 64, "size": "288x288 JPEG",
                         "seconds_to_write": time.perf_counter() - t}
    print(json.dumps(result), flush=True)

    def step(name, fn):
        if name not in args.steps.split(","):
            return
        start = time.perf_counter()
        try:
            result[name] = fn()
        except (Exception, SystemExit) as exc:  # one failed part must not cost the others
            result[name] = {"error": str(exc)[-2000:]}
        result[name]["bench_seconds"] = time.perf_counter() - start
        print(json.dumps({name: result[name]}), flush=True)
        (out / "gpu_round2.json").write_text(json.dumps(result, indent=2))

    def plain():
        seconds, line = run([sys.executable, "bench/plain_loop.py", "--data", str(data), "--mode", "ft", "--arch",
                             "resnet50", "--epochs", str(args.epochs), "--size", "224", "--batch-size",
                             str(args.batch_size), "--workers", "8", "--augment", "standard", "--device", "cuda"],
                            out / "plain.log")
        found = json.loads(line)
        return {"wall_seconds": seconds, "val_accuracy": found["val_accuracy"],
                "images_per_second_after_first": float(np.mean([e["images_per_second"] for e in found["epochs"][1:]]))}

    def ours_with_record(name, extra):
        found = ours(data, out, name, extra, args.epochs, args.batch_size)
        integrity = RunFolder(out / name).read_run().integrity
        found["integrity"] = None if integrity is None else {**asdict(integrity), "intact": integrity.intact}
        return found

    def synthetic_run():
        seconds, line = run([sys.executable, "bench/gpu_round2.py", "--out", str(out), "--synthetic-only",
                             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)], out / "synthetic.log")
        return json.loads(line)

    step("plain", plain)
    step("ours", lambda: ours_with_record("ours", []))
    step("ours_no_telemetry", lambda: ours_with_record("ours-no-telemetry", ["--no-telemetry"]))
    step("synthetic", synthetic_run)
    step("ours_cudnn_benchmark", lambda: ours_with_record("ours-cudnn-benchmark", ["--cudnn-benchmark"]))
    step("shutdown", lambda: json.loads(run([sys.executable, "bench/gpu_round2.py", "--out", str(out),
                                             "--diagnosis-only"], out / "shutdown.log")[1]))
    step("decode", lambda: decode_bench(Path("/tmp/ts-gpu-photos"), 192, 256))
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if gpus >= 2:
        step("ddp", lambda: json.loads(run([sys.executable, "bench/distributed.py", "--device", "cuda", "--nproc",
                                            str(gpus), "--size", "128", "--epochs", "5", "--batch-size", "64",
                                            "--multi-process-flags=--sync-bn"], out / "ddp.log")[1]))
    else:
        result["ddp"] = {"skipped": f"{gpus} GPU(s): nccl DDP needs two or more"}
    step("checks", lambda: {"seconds": run([sys.executable, "bench/gpu_checks.py", "--out", str(out / "checks")],
                                           out / "checks.log")[0]})
    try:
        plain_ips = result["plain"]["images_per_second_after_first"]
        ours_ips = result["ours"]["images_per_second_after_first"]
        result["speedup_vs_plain"] = ours_ips / plain_ips
        result["real_over_synthetic"] = ours_ips / result["synthetic"]["images_per_second_after_first"]
    except (KeyError, TypeError, ZeroDivisionError):
        pass
    (out / "gpu_round2.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result.get(k) for k in ("speedup_vs_plain", "real_over_synthetic")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
