"""The deployment evidence of `export` and `predict`: int8 behind an accuracy gate, a model card
beside every exported file, calibrated probabilities and the unknown verdict.

app.cli calls these hooks: add_export_args/add_predict_args when building the parsers,
after_export once every format passed its parity check, predictions to classify.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import UserError


def add_export_args(export, number) -> None:
    export.add_argument("--int8", action="store_true",
                        help="also write <name>.int8.onnx (static quantization), kept only if top-1 accuracy on the "
                             "validation images falls by at most --max-drop points")
    export.add_argument("--calibration-images", type=number("export.calibration_images"), default=None, metavar="N",
                        help="with --int8: training images (stratified) that set the int8 ranges (default 300)")
    export.add_argument("--max-drop", type=number("export.max_drop"), default=None, metavar="POINTS",
                        help="with --int8: largest allowed top-1 accuracy drop in points (default 1.0)")


def add_predict_args(predict) -> None:
    predict.add_argument("--raw", action="store_true",
                         help="uncalibrated probabilities (softmax of the logits), not those scaled by the "
                              "temperature fitted on the validation images")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: each image also mirrored, the logits averaged")


def check_export_args(args, formats: list[str]) -> None:
    """Before anything is written: the int8 flags make sense together."""
    if not args.int8 and (args.calibration_images is not None or args.max_drop is not None):
        raise UserError("--calibration-images and --max-drop apply to --int8; add --int8 or leave them out")
    if args.int8 and "onnx" not in formats:
        raise UserError("--int8 quantizes the ONNX export: add --format onnx")
    if args.int8:  # the run's images must still be there: refused before any file is written
        from engine.deploy.int8 import run_images
        from engine.insight.task_evaluation import checkpoint_task_of
        from engine.training.tasks import refuse_unless_single_label

        refuse_unless_single_label(checkpoint_task_of(Path(args.checkpoint)), "--int8 (its accuracy gate)")

        run_images(Path(args.checkpoint))


def after_export(args, checkpoint: Path, reports: list[dict]) -> list[dict]:
    """A card beside each file written; then, with --int8, the int8 file (and its card). Returns the
    int8 report, if made, for the --json list."""
    from engine.deploy.int8 import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_DROP, export_int8
    from engine.deploy.model_card import data_fingerprint, write_card
    from engine.model.checkpoint import load_checkpoint

    # The dataset is walked once for all the cards.
    data = data_fingerprint(((load_checkpoint(checkpoint).get("config") or {}).get("data") or {}).get("root"))
    for report in reports:
        write_card(checkpoint, report["path"], report["format"], parity=report, training_data=data)
    if not args.int8:
        return []
    fp32 = next(r["path"] for r in reports if r["format"] == "onnx")
    report = export_int8(checkpoint, fp32, calibration_images=args.calibration_images or DEFAULT_CALIBRATION_IMAGES,
                         max_drop=DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop).to_dict()
    write_card(checkpoint, report["path"], "onnx-int8", int8=report, training_data=data)
    kept = f"; left in fp32: {', '.join(report['excluded_nodes'])}" if report["excluded_nodes"] else ""
    print(f"{'onnx-int8':<12} {report['path']}  top-1 {report['fp32_accuracy']:.1%} -> {report['int8_accuracy']:.1%} "
          f"(drop {report['accuracy_drop']:.2f} points) on {report['images']} images · {report['speedup']:.2f}x the "
          f"fp32 throughput{kept}", file=sys.stderr)
    return [report]


def predictions(model, path: str, logits, k: int, raw: bool) -> list[dict]:
    from engine.deploy.calibrated import classify, deployment_calibration

    return classify(logits, model.class_names, k, deployment_calibration(path, model.format), raw=raw)


def prediction_line(image: Path, result: dict) -> str:
    ranked = ", ".join(f"{r['class']} {r['probability']:.3f}" for r in result["top_k"])
    if result.get("unknown"):
        ranked += f"  [unknown: {result['score']['name']} {result['score']['value']:.4g} < {result['score']['threshold']:.4g}]"
    return f"{image}: {ranked}"


def task_prediction_line(image: Path, result: dict) -> str:
    if "value" in result:
        return f"{image}: {result['value']:.6g}"
    ranked = ", ".join(f"{name} {p:.3f}" for name, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]))
    return f"{image}: {', '.join(result['labels']) or '(no label)'}  [{ranked}]"


def evaluate_unknown(args, source: Path) -> int:
    """`evaluate RUN_DIR|CHECKPOINT --unknown DIR`."""
    import json

    from engine.insight.unknown_images import evaluate_unknown as measure
    from engine.runs.run_folder import RunFolder

    if args.data:
        raise UserError("--unknown measures the run's unknown threshold against its validation images: leave --data out")
    checkpoint = RunFolder(source).checkpoint_path if source.is_dir() else source
    if source.is_dir():
        RunFolder(source).read_run()  # one line when it is not a run folder
        if not checkpoint.is_file():
            raise UserError(f"{source} has no checkpoint yet (stopped before its first epoch ended)")
    report = measure(checkpoint, args.unknown)
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    area = f"{report.auroc:.3f}" if report.auroc is not None else "n/a"
    print(f"unknown images: {report.caught:.1%} of {report.unknown_images} caught (false-accept rate "
          f"{report.false_accept_rate:.1%}); AUROC {area} against {report.validation_images} validation images, "
          f"{report.validation_kept:.1%} of which are kept; score {report.score}, threshold {report.threshold:.6g}"
          + (f"; {report.skipped} file(s) could not be read" if report.skipped else ""))
    return 0
