#!/usr/bin/env python3
"""CUDA correctness checks beyond speed: fp16 with loss scaling, gradual unfreezing, cached
features on the GPU, resume, and export parity of a GPU-trained checkpoint.

    python3 bench/gpu_checks.py --out DIR     (run after bench/gpu_bench.py made /tmp/ts-gpu-data)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig  # noqa: E402
from engine.deploy.export import FORMATS, default_path, export, parity_batch  # noqa: E402
from engine.runs.run_folder import RunFolder  # noqa: E402
from engine.training.trainer import fit  # noqa: E402


def config(data: str, out: Path, strategy: str, precision: str, epochs: int, augment: str = "standard",
           arch: str = "resnet50") -> RunConfig:
    return RunConfig(data=DataConfig(root=data, image_size=224, augment=augment),
                     model=ModelConfig(arch, "none"), plan=PlanConfig(strategy=strategy, base_lr=1e-3),
                     train=TrainConfig(epochs=epochs, batch_size=128, device="cuda", precision=precision,
                                       schedule="cosine", warmup_epochs=0.5),
                     out_dir=str(out))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="/tmp/ts-gpu-data")
    args = p.parse_args()
    out = Path(args.out)
    if not Path(args.data).exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from gpu_bench import make_dataset

        make_dataset(Path(args.data), 448, 64, 288)
    results = {}
    for name, cfg in (
        ("fp16_gradual", config(args.data, out / "fp16", "gradual", "fp16", 3)),
        ("bf16_feature_extraction_10_epochs", config(args.data, out / "fe", "feature-extraction", "auto", 10, "none")),
    ):
        start = time.perf_counter()
        result = fit(cfg)
        metrics = RunFolder(cfg.out_dir).read_epochs()
        results[name] = {"seconds": time.perf_counter() - start, "epochs": result.epochs_run,
                         "val_accuracy": [round(m.val_accuracy, 4) for m in metrics],
                         "trainable_params": [m.trainable_params for m in metrics],
                         "epoch_seconds": [m.seconds for m in metrics],
                         "finite_losses": all(m.train_loss == m.train_loss for m in metrics)}
        print(json.dumps({name: results[name]}), flush=True)
    resumed = fit(config(args.data, out / "fp16", "gradual", "fp16", 4), resume=True)
    results["fp16_resume_to_4"] = {"epochs_run": resumed.epochs_run}
    checkpoint = out / "fp16" / "checkpoint.pt"
    batch = parity_batch(checkpoint, 32)
    results["export_parity"] = {fmt: export(checkpoint, fmt, default_path(checkpoint, fmt, out / "exports"), batch).to_dict()
                                for fmt in FORMATS if fmt != "onnx" or _has("onnx")}
    print(json.dumps({"fp16_resume_to_4": results["fp16_resume_to_4"], "export_parity": results["export_parity"]}))
    (out / "gpu_checks.json").write_text(json.dumps(results, indent=2))
    return 0


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
