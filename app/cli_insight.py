"""Sub-commands evaluate, explain: what a trained model learned and where it fails.

Registered by app.cli: add_commands(sub, number) adds the parsers, HANDLERS maps a command to its
function (args -> exit code). `number(key)` is the argparse type checked by engine.config.NUMBER_RULES.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from app.cli_output import print_json
from engine.errors import UserError

MOST_CONFUSED_SHOWN = 10


def add_commands(sub, number) -> None:
    """Adds this module's sub-parsers to `sub`."""
    evaluate = sub.add_parser("evaluate", help="accuracy, confusion matrix, per-class scores and the worst images "
                                               "of a run (its best epoch) or of a checkpoint on another folder")
    evaluate.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--data", metavar="DIR", help="evaluate on this folder (a test set) instead; its class "
                                                        "names must be the model's")
    evaluate.add_argument("--top-losses", type=_count, default=10, metavar="N", help="highest-loss images to list")
    evaluate.add_argument("--batch-size", type=number("train.batch_size"), default=32, help="with --data")
    evaluate.add_argument("--device", default="auto", help="with --data: auto | cpu | cuda[:N]")
    evaluate.add_argument("--unknown", metavar="DIR", help="a folder of images of no class: how many the unknown "
                                                           "threshold catches, its AUROC and false-accept rate")
    evaluate.add_argument("--tta", action="store_true", help="test-time augmentation: each image also mirrored, the "
                          "logits averaged; reports the accuracy change (a run's images are predicted again)")
    evaluate.add_argument("--json", action="store_true")

    explain = sub.add_parser("explain", help="Grad-CAM heat maps: where in each image the evidence for a class was")
    explain.add_argument("checkpoint")
    explain.add_argument("images", nargs="+", metavar="IMAGE")
    explain.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<stem>.cam.npy and DIR/<stem>.cam.png")
    explain.add_argument("--layer", metavar="MODULE", help="the module whose activation is used "
                                                           "(default: the last stage before the head)")
    explain.add_argument("--target", metavar="CLASS", help="the class to explain (default: the predicted one)")
    explain.add_argument("--json", action="store_true")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError("must be between 0 and 100000")
    return value


# --- evaluate ----------------------------------------------------------------------------------


def _evaluate(args) -> int:
    from engine.insight.evaluation import evaluate_checkpoint, evaluate_run
    from engine.runs.run_folder import RunFolder

    source = Path(args.source)
    if not source.exists():
        raise UserError(f"not found: {source}")
    from engine.insight.task_evaluation import checkpoint_task_of

    task = checkpoint_task_of(source)
    if task != "single-label":
        return _evaluate_task(args, source, task)
    if args.unknown is not None:
        if args.tta:
            raise UserError("--tta and --unknown measure different things: run them one at a time")
        from app.cli_deploy import evaluate_unknown

        return evaluate_unknown(args, source)
    norm = None  # the run's BatchNorm statistics: adapted or as loaded, and why (run.json)
    if source.is_dir():
        folder = RunFolder(source)
        norm = folder.read_run().norm_choice  # one line when it is not a run folder
        if args.data:
            if not folder.has_checkpoint():
                raise UserError(f"{source} has no checkpoint yet (stopped before its first epoch ended)")
            evaluation = evaluate_checkpoint(folder.checkpoint_path, args.data, args.device, args.batch_size,
                                             top_losses=args.top_losses, tta=args.tta)
        else:
            evaluation = evaluate_run(source, args.top_losses, args.tta, args.device, args.batch_size)
    elif args.data:
        evaluation = evaluate_checkpoint(source, args.data, args.device, args.batch_size, top_losses=args.top_losses,
                                         tta=args.tta)
    elif RunFolder(source.parent).checkpoint_path == source and RunFolder(source.parent).exists():
        evaluation = evaluate_run(source.parent, args.top_losses, args.tta, args.device, args.batch_size)
        norm = RunFolder(source.parent).read_run().norm_choice  # a run's own checkpoint
    else:
        raise UserError(f"{source} is not in its run folder: give --data DIR to evaluate it on a folder of images")
    if args.json:
        print_json({**evaluation.to_json(), **({"norm_statistics": norm.to_dict()} if norm else {})})
        return 0
    print(format_evaluation(evaluation, norm.line if norm else None))
    for skipped in evaluation.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    return 0


def _evaluate_task(args, source: Path, task: str) -> int:
    """evaluate for a multi-label or regression model: its task's figures (--unknown is single-label's)."""
    from engine.insight.task_evaluation import evaluate_task_checkpoint, evaluate_task_run, format_task_evaluation
    from engine.model.checkpoint import load_checkpoint
    from engine.runs.run_folder import RunFolder

    if args.unknown is not None:
        raise UserError(f"--unknown supports single-label models only; this one is {task}")
    if args.tta:
        raise UserError(f"evaluate --tta supports single-label models only; this one is {task} (predict --tta works)")
    folder = RunFolder(source if source.is_dir() else source.parent)
    checkpoint = folder.checkpoint_path if source.is_dir() else source
    if args.data:
        evaluation = evaluate_task_checkpoint(checkpoint, args.data, args.device, args.batch_size,
                                              worst=args.top_losses)
    elif folder.exists() and folder.checkpoint_path.resolve() == checkpoint.resolve():
        evaluation = evaluate_task_run(folder.path, load_checkpoint(checkpoint), worst=args.top_losses)
    else:
        raise UserError(f"{source} is not in its run folder: give --data CSV to evaluate it on a labels CSV")
    if args.json:
        print_json(evaluation.to_json())
        return 0
    print(format_task_evaluation(evaluation))
    for skipped in evaluation.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    return 0


def format_evaluation(evaluation, norm_line: str | None = None) -> str:
    """The human report: headline figures, confusion matrix, per-class table, pairs, worst images
    (`norm_line`: what the run did with its BatchNorm statistics, under the headline)."""
    names = evaluation.class_names
    out = io.StringIO()
    total = len(evaluation.records)
    print(f"accuracy {evaluation.accuracy:.4f} · balanced accuracy {evaluation.balanced_accuracy:.4f} · "
          f"{total} image(s)", file=out)
    if evaluation.data_root:
        print(f"images under {evaluation.data_root}", file=out)
    if norm_line:
        print(norm_line, file=out)
    if evaluation.tta:
        tta = evaluation.tta
        print(f"test-time augmentation ({' + '.join(tta['views'])}): accuracy {tta['accuracy_without']:.4f} without, "
              f"{evaluation.accuracy:.4f} with ({100 * tta['accuracy_change']:+.1f} points)", file=out)
    width = max(8, *(len(n) for n in names)) + 2
    print("\nconfusion matrix (rows: true class, columns: predicted)", file=out)
    print(" " * width + "".join(f"{n:>{width}}" for n in names), file=out)
    for name, row in zip(names, evaluation.confusion_matrix):
        print(f"{name:<{width}}" + "".join(f"{count:>{width}}" for count in row), file=out)
    print(f"\n{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}", file=out)
    for name in names:
        s = evaluation.per_class[name]
        print(f"{name:<{width}}{s['precision']:>10.3f}{s['recall']:>10.3f}{s['f1']:>10.3f}{s['support']:>10}",
              file=out)
    print("\nmost confused (true -> predicted)", file=out)
    if not evaluation.most_confused:
        print("  none: every image was classified correctly", file=out)
    for pair in evaluation.most_confused[:MOST_CONFUSED_SHOWN]:
        print(f"  {pair['true']} -> {pair['pred']}  {pair['count']}", file=out)
    if evaluation.top_losses:
        print("\nhighest loss", file=out)
    for r in evaluation.top_losses:
        print(f"  {r.loss:8.4f}  {r.path}  true {r.true}, predicted {r.pred} ({r.confidence:.2f})", file=out)
    return out.getvalue().rstrip("\n")


# --- explain -----------------------------------------------------------------------------------


def _explain(args) -> int:
    import numpy as np

    from engine.atomic import atomic_write_bytes
    from engine.insight.gradcam import explain, is_experimental, overlay
    from engine.deploy.predict import load_classifier

    images = [Path(p) for p in args.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise UserError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise UserError(f"{stems[image.stem]} and {image} would write the same {image.stem}.cam.npy; "
                            f"explain them in separate --out folders")
        stems[image.stem] = image
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    classifier = load_classifier(args.checkpoint)
    layer = args.layer  # None: the deepest stage whose map has extent at this image size
    if is_experimental(classifier.arch):
        print(f"transfer-studio: note: Grad-CAM on {classifier.arch} is experimental (attention spreads evidence "
              f"across tokens)", file=sys.stderr)
    reports = []
    for image in images:
        result = explain(classifier, image, layer=layer, target=args.target)
        npy, png = out / f"{image.stem}.cam.npy", out / f"{image.stem}.cam.png"
        try:
            buffer = io.BytesIO()
            np.save(buffer, result.cam)
            atomic_write_bytes(npy, buffer.getvalue())
            buffer = io.BytesIO()
            overlay(image, result.cam).save(buffer, format="PNG")
            atomic_write_bytes(png, buffer.getvalue())
        except OSError as exc:
            raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
        predicted = next(iter(result.probabilities))
        reports.append({"image": str(image), "target": result.target, "layer": result.layer,
                        "predicted": predicted, "probabilities": result.probabilities, "note": result.note,
                        "cam": str(npy), "overlay": str(png)})
        if not args.json:
            print(f"{image}: predicted {predicted} ({result.probabilities[predicted]:.3f}); explained "
                  f"{result.target} at {result.layer} -> {npy}, {png}" + (f" ({result.note})" if result.note else ""))
    if args.json:
        print_json(reports)
    return 0


HANDLERS: dict = {"evaluate": _evaluate, "explain": _explain}
