"""Sub-commands that check and mend a dataset: scan, suspects, relabel, exclude, undo, redo.

Registered by app.cli: add_commands(sub, number) adds the parsers, HANDLERS maps a command to its
function (args -> exit code). `number(key)` is the argparse type checked by engine.config.NUMBER_RULES.
Every editing command first repairs the dataset (engine.curation.dataset_edits.repair): an action a
crash left half-done is completed before anything moves a file. `suspects` only reads: it notes a
half-done action and leaves it to the next edit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.cli_output import print_json


def add_commands(sub, number) -> None:
    """Adds this module's sub-parsers to `sub`."""
    from engine.data.label_table import TASK_CHOICES

    scan = sub.add_parser("scan", help="check a dataset (class folders or a labels CSV): counts per class or label, "
                                       "label co-occurrence or the value's range, and every file or row skipped")
    scan.add_argument("data", metavar="DIR|CSV")
    scan.add_argument("--task", choices=TASK_CHOICES, default="auto",
                      help="auto: from the CSV's columns (labels: multi-label, value: regression) or the folder")
    scan.add_argument("--val-fraction", type=number("data.val_fraction"), default=0.2)
    scan.add_argument("--seed", type=number("train.seed"), default=0)
    scan.add_argument("--json", action="store_true")

    suspects = sub.add_parser("suspects", help="images whose label looks wrong, most suspect first, and "
                                               "near-duplicates across classes or the train/validation split")
    suspects.add_argument("--data", required=True, metavar="DIR")
    suspects.add_argument("--model", required=True, metavar="ARCH")
    suspects.add_argument("--weights", default="imagenet",
                          help="imagenet | none | a state dict file: the frozen trunk whose features are probed")
    suspects.add_argument("--run", metavar="RUN_DIR", help="without usable features (--weights none): rank this "
                                                           "run's validation predictions instead")
    suspects.add_argument("--folds", type=number("suspects.folds"), default=5)
    suspects.add_argument("--threshold", type=number("suspects.threshold"), default=0.98,
                          help="cosine similarity from which two images count as near-duplicates")
    suspects.add_argument("--image-size", type=number("data.image_size"), default=224)
    suspects.add_argument("--batch-size", type=number("train.batch_size"), default=32)
    suspects.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]: where the trunk runs")
    suspects.add_argument("--top", type=number("predict.top_k"), default=20, metavar="N",
                          help="suspects listed (all with --json)")
    suspects.add_argument("--json", action="store_true")

    relabel = sub.add_parser("relabel", help="move images into another class folder (undo puts them back)")
    relabel.add_argument("data", metavar="DATA")
    relabel.add_argument("paths", nargs="+", metavar="PATH")
    relabel.add_argument("--to", required=True, metavar="CLASS")

    exclude = sub.add_parser("exclude", help="move images to DATA/_excluded/<class>/, which training ignores")
    exclude.add_argument("data", metavar="DATA")
    exclude.add_argument("paths", nargs="+", metavar="PATH")

    for name, what in (("undo", "reverse the last relabel or exclude"), ("redo", "do again what undo reversed")):
        command = sub.add_parser(name, help=f"{what} (from the dataset's journal)")
        command.add_argument("data", metavar="DATA")


def _repaired(data: str) -> None:
    """Complete what a crash left half-done, and say so on stderr."""
    from engine.curation.dataset_edits import repair

    for action in repair(data):  # a folder that is not there has no journal: the command says so
        print(f"repaired: completed {action.describe()}", file=sys.stderr)


def _note_pending(data: str) -> None:
    from engine.curation.dataset_edits import pending

    for action in pending(data):
        print(f"transfer-studio: note: {action.kind} #{action.id} was left half-done by a crash; the next relabel, "
              f"exclude, undo or redo on this dataset completes it", file=sys.stderr)


def _scan(args) -> int:
    from engine.data.dataset import scan_dataset
    from engine.data.label_table import histogram_lines

    summary = scan_dataset(args.data, args.val_fraction, args.seed, task=args.task).summary()
    if args.json:
        print_json(summary)
        return 0
    print(f"{summary['root']}: {summary['task']}, {summary['total']} image(s), layout {summary['layout']}")
    if summary["task"] == "regression":
        values = summary["values"]
        print(f"value: min {values['min']:.6g}, max {values['max']:.6g}, mean {values['mean']:.6g}, "
              f"std {values['std']:.6g}")
        for line in histogram_lines(values):
            print(line)
        print(f"train {summary['classes'][0]['train']}, val {summary['classes'][0]['val']}")
    else:
        what = "label" if summary["task"] == "multi-label" else "class"
        print(f"{what:<24}{'train':>8}{'val':>8}")
        for c in summary["classes"]:
            print(f"{c['class'][:23]:<24}{c['train']:>8}{c['val']:>8}")
    if summary["task"] == "multi-label":
        names = [c["class"] for c in summary["classes"]]
        print(f"images without a label: {summary['without_label']}")
        print("co-occurrence (images with both labels):")
        print(" " * 16 + "".join(f"{n[:7]:>8}" for n in names))
        for name, row in zip(names, summary["co_occurrence"]):
            print(f"{name[:15]:<16}" + "".join(f"{v:>8}" for v in row))
    for s in summary["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    return 0


def _suspects(args) -> int:
    from engine.curation.suspects import find_suspects

    if Path(args.data).is_dir():
        _note_pending(args.data)
    report = find_suspects(args.data, args.model, args.weights, args.folds, threshold=args.threshold,
                           run_dir=args.run, image_size=args.image_size, batch_size=args.batch_size,
                           device=args.device)
    if args.json:
        print_json(report.to_json())
        return 0
    print(report.note)
    print(f"{'probability':>11}  {'given':<14}{'likely':<14}path")
    for s in report.suspects[:max(0, args.top)]:
        print(f"{s['probability']:>11.4f}  {s['given']:<14}{s['likely']:<14}{s['path']}")
    if report.duplicates:
        print(f"\nnear-duplicates (cosine similarity >= {args.threshold})")
    for a, b, similarity in report.duplicates:
        print(f"  {similarity:.4f}  {a}  {b}")
    return 0


def _edit(action) -> int:
    print(action.describe())
    return 0


def _relabel(args) -> int:
    from engine.curation.dataset_edits import relabel

    _repaired(args.data)
    return _edit(relabel(args.data, args.paths, args.to))


def _exclude(args) -> int:
    from engine.curation.dataset_edits import exclude

    _repaired(args.data)
    return _edit(exclude(args.data, args.paths))


def _undo(args) -> int:
    from engine.curation.dataset_edits import undo

    _repaired(args.data)
    return _edit(undo(args.data))


def _redo(args) -> int:
    from engine.curation.dataset_edits import redo

    _repaired(args.data)
    return _edit(redo(args.data))


HANDLERS: dict = {"scan": _scan, "suspects": _suspects, "relabel": _relabel, "exclude": _exclude, "undo": _undo, "redo": _redo}
