#!/usr/bin/env python3
"""torch.compile on CUDA through Transfer Studio: resnet18 at 224 px, 3 epochs, with and without.

    python3 bench/gpu_compile.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.runs.run_folder import RunFolder  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from gpu_bench import make_dataset

    data = Path("/tmp/ts-gpu-compile-data")
    make_dataset(data, 256, 32, 288)
    results = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = Path(args.out) / name
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "app", "train", "--data", str(data), "--model", "resnet18",
                               "--weights", "none", "--epochs", "3", "--image-size", "224", "--batch-size", "128",
                               "--device", "cuda", "--workers", "8", "--out", str(out), "--json", *extra],
                              cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                                            **{k: v for k, v in __import__("os").environ.items()}})
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        metrics = RunFolder(out).read_epochs()
        results[name] = {"wall_seconds": round(time.perf_counter() - start, 1),
                         "epoch_seconds": [m.seconds for m in metrics],
                         "images_per_second": [m.images_per_second for m in metrics],
                         "val_accuracy": metrics[-1].val_accuracy}
        print(json.dumps({name: results[name]}), flush=True)
    (Path(args.out) / "gpu_compile.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
