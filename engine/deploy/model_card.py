"""A model card beside every export: <file>.card.json (for programs, `predict` among them) and
<file>.card.md (for people). Everything on it is read from files, never typed: the checkpoint
(classes, preprocessing, configuration, the best epoch's validation figures, calibration and the
unknown threshold), the export's parity report or int8 report, the exported file's own bytes, the
source weights' bytes and the dataset as found at export time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.atomic import atomic_write_bytes
from engine.errors import UserError
from engine.model.checkpoint import load_checkpoint

CARD_FORMAT = 1
TASK = "single-label image classification"
TASK_TITLES = {"single-label": TASK, "multi-label": "multi-label image classification", "regression": "image regression"}


def card_path(exported: str | os.PathLike) -> Path:
    return Path(str(exported) + ".card.json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(root: str | None) -> dict:
    """File count and SHA-256 of the sorted list of (relative path, size) of the dataset's image files
    (folders starting with "_" or ".", such as _excluded, left out as the scan leaves them). Sizes come
    from the directory listing: no image is opened, so a large dataset costs one walk."""
    from engine.data.images import is_image_file

    if root and Path(root).is_file():  # a labels CSV: its own bytes name the images and their labels
        return {"root": str(root), "found": True, "files": 1, "sha256": file_sha256(root), "measured": "at export"}
    if not root or not Path(root).is_dir():
        return {"root": root, "found": False}
    entries = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(("_", "."))]
        for name in files:
            path = Path(folder) / name
            if is_image_file(path):
                entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    entries.sort()
    text = "".join(f"{path}\t{size}\n" for path, size in entries)
    return {"root": str(root), "found": True, "files": len(entries),
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "measured": "at export"}


def validation_figures(metrics: dict, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy and per-class precision, recall, F1 and support of the best epoch,
    from its confusion matrix (rows: true class, columns: predicted)."""
    confusion = metrics.get("confusion_matrix") or []
    if len(confusion) != len(class_names):
        return {"accuracy": metrics.get("val_accuracy"), "balanced_accuracy": metrics.get("val_balanced_accuracy")}
    per_class = {}
    for i, name in enumerate(class_names):
        support, predicted, hits = sum(confusion[i]), sum(row[i] for row in confusion), confusion[i][i]
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {"accuracy": metrics.get("val_accuracy"), "balanced_accuracy": metrics.get("val_balanced_accuracy"),
            "images": sum(map(sum, confusion)), "epoch": metrics.get("epoch"), "per_class": per_class}


def source_weights(config: dict, arch: str) -> dict:
    weights = (config.get("model") or {}).get("weights")
    path = None
    if weights == "imagenet":
        from engine.model.architectures import weights_cache_path

        path = weights_cache_path(arch)
    elif weights and weights != "none":
        path = Path(weights)
    found = path is not None and path.is_file()
    return {"weights": weights, "file": str(path) if path else None, "sha256": file_sha256(path) if found else None}


def versions() -> dict:
    import torch
    import torchvision

    from engine import __version__

    found = {"transfer_studio": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}
    for name in ("onnxruntime", "onnx"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def build_card(checkpoint: str | os.PathLike, exported: str | os.PathLike, fmt: str, parity: dict | None = None,
               int8: dict | None = None, training_data: dict | None = None) -> dict:
    """`training_data`: the dataset's fingerprint when already taken (several files exported at once)."""
    ckpt = load_checkpoint(Path(checkpoint))
    config = ckpt.get("config") or {}
    class_names = list(ckpt["class_names"])
    calibration = ckpt.get("calibration") or {}
    from engine.training.tasks import CheckpointTask

    task = CheckpointTask.of(ckpt)
    metrics = ckpt.get("metrics") or {}
    validation = (validation_figures(metrics, class_names) if task.name == "single-label" else
                  {"epoch": metrics.get("epoch"), "loss": metrics.get("val_loss"),
                   **{key[4:]: value for key, value in metrics.items()
                      if key in ("val_mAP", "val_macro_f1", "val_micro_f1", "val_mae", "val_rmse", "val_r2")}})
    return {
        "card_format": CARD_FORMAT, "task": TASK_TITLES[task.name],
        # multi-label: the label names and each one's threshold; regression: the target's mean and scale.
        "task_fields": task.to_dict(),
        "file": Path(exported).name, "format": fmt, "sha256": file_sha256(exported),
        "architecture": ckpt["arch"], "classes": class_names, "preprocessing": ckpt["preprocessing"],
        "source_weights": source_weights(config, ckpt["arch"]),
        "checkpoint": {"file": str(checkpoint), "weights_sha256": ckpt.get("weights_sha256"), "epoch": ckpt.get("epoch")},
        "training_data": training_data or data_fingerprint((config.get("data") or {}).get("root")),
        "configuration": config,
        "validation": validation,
        "parity": parity,
        "calibration": {key: calibration[key] for key in ("temperature", "ece_before", "ece_after", "nll_before",
                                                          "nll_after", "ece_bins", "images", "epoch")
                        if key in calibration} or None,
        "unknown": calibration.get("unknown"),
        "int8": int8,
        "versions": versions(),
    }


def write_card(checkpoint: str | os.PathLike, exported: str | os.PathLike, fmt: str, parity: dict | None = None,
               int8: dict | None = None, training_data: dict | None = None) -> Path:
    """Write <exported>.card.json and .card.md; returns the JSON card's path."""
    card = build_card(checkpoint, exported, fmt, parity, int8, training_data)
    path = card_path(exported)
    try:
        atomic_write_bytes(path, (json.dumps(card, indent=2) + "\n").encode())
        atomic_write_bytes(Path(str(exported) + ".card.md"), card_markdown(card).encode())
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def read_card(exported: str | os.PathLike) -> dict | None:
    """The card beside an exported file, or None; a card that cannot be read is one line."""
    path = card_path(exported)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(card, dict) or not isinstance(card.get("card_format"), int):
        raise UserError(f"{path} is not a Transfer Studio model card")
    if card["card_format"] > CARD_FORMAT:
        raise UserError(f"{path} was written by a newer Transfer Studio (card format {card['card_format']})")
    return card


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


def card_markdown(card: dict) -> str:
    val, cal, unknown, data = card["validation"], card["calibration"], card["unknown"], card["training_data"]
    prep = card["preprocessing"]
    lines = [
        f"# Model card: {card['file']}", "",
        f"- Task: {card['task']}; {len(card['classes'])} classes: {', '.join(card['classes'])}",
        f"- Architecture: {card['architecture']}; format {card['format']}; SHA-256 `{card['sha256']}`",
        f"- Preprocessing: resize shorter side to {prep['resize']} px ({prep.get('interpolation', 'bilinear')}), "
        f"centre crop {prep['crop']} px, "
        f"normalize mean {prep['mean']} std {prep['std']}",
        f"- Source weights: {card['source_weights']['weights']}"
        + (f" (SHA-256 `{card['source_weights']['sha256']}`)" if card["source_weights"]["sha256"] else ""),
        f"- Training data: " + (f"{data['files']} files at {data['root']}, list SHA-256 `{data['sha256']}` (at export)"
                                if data.get("found") else f"{data.get('root')} not found at export"),
        "", "## Validation (best epoch)", "",
    ]
    fields = card.get("task_fields") or {"name": "single-label"}
    if fields["name"] == "single-label":
        lines += [f"Accuracy {_pct(val.get('accuracy'))}, balanced accuracy {_pct(val.get('balanced_accuracy'))}"
                  + (f" on {val['images']} images" if val.get("images") else ""), ""]
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in val.items() if k not in ("epoch", "loss") and v is not None)
        lines += [shown or "no validation figures", ""]
    if fields["name"] == "multi-label":
        lines += ["| label | threshold |", "|---|---|"]
        lines += [f"| {n} | {t:.4f} |" for n, t in zip(card["classes"], fields["thresholds"])] + [""]
    if fields["name"] == "regression":
        lines += [f"Output: one value, standardised; value = output x {fields['scale']:.6g} + {fields['mean']:.6g}", ""]
    if val.get("per_class"):
        lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
                  for name, s in val["per_class"].items()]
        lines.append("")
    if card["parity"]:
        p = card["parity"]
        what = {"probabilities": ("Label-decision agreement", "probability"), "values": ("Agreement", "value")}.get(
            p.get("compared"), ("Top-1 agreement", "logit"))
        lines += ["## Parity", "", f"{what[0]} {_pct(p.get('top1_agreement'))}, largest {what[1]} difference "
                  f"{p.get('max_abs_logit_diff', 0):.2e} on {p.get('images')} images (tolerance {p.get('tolerance')})", ""]
    if card["int8"]:
        q = card["int8"]
        lines += ["## int8", "", f"Top-1 fp32 {_pct(q['fp32_accuracy'])}, int8 {_pct(q['int8_accuracy'])} "
                  f"(drop {q['accuracy_drop']:.2f} points, allowed {q['max_drop']:g}); {q['speedup']:.2f}x the fp32 "
                  f"throughput on CPU" + (f"; left in fp32: {', '.join(q['excluded_nodes'])}" if q["excluded_nodes"] else ""), ""]
    if cal:
        lines += ["## Calibration", "", f"Temperature {cal['temperature']:.4g}; ECE ({cal.get('ece_bins')} bins) "
                  f"{cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after, on {cal.get('images')} validation images", ""]
    if unknown:
        lines += ["## Unknown images", "", f"Score {unknown['score']}; an image scoring below {unknown['threshold']:.6g} "
                  f"is marked unknown (keeps {_pct(unknown.get('validation_kept'))} of validation images)", ""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v), ""]
    return "\n".join(lines)
