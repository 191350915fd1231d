"""Sub-command models: the architectures on offer from torchvision and timm, with their sizes and weights.

Registered by app.cli: add_commands(sub, number) adds the parser, HANDLERS maps the command to its function.
"""

from __future__ import annotations

import json
import sys


def add_commands(sub, number) -> None:
    """Adds this module's sub-parser to `sub`."""
    models = sub.add_parser("models", help="list the models on offer (torchvision and timm:NAME): parameters, "
                                           "default input size, pretrained weights")
    models.add_argument("--source", choices=("torchvision", "timm"), help="only this source (default: both)")
    models.add_argument("--filter", default="", metavar="TEXT", help="only names containing TEXT")
    models.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    models.add_argument("--json", action="store_true")


def _models(args) -> int:
    from engine.model.model_list import list_models

    def progress(done: int, total: int) -> None:
        if total > 50 and sys.stderr.isatty():  # counting parameters the first time takes a while
            print(f"\rcounting parameters {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    rows = list_models(args.source, args.filter, args.pretrained, progress=progress)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows]))
        return 0
    print(f"{'model':<48} {'source':<12} {'parameters':>13} {'size':>5}  pretrained")
    for row in rows:
        params = f"{row.parameters:,}" if row.parameters is not None else "?"
        tags = ", ".join(row.pretrained[:3]) + (f" +{len(row.pretrained) - 3}" if len(row.pretrained) > 3 else "")
        print(f"{row.name:<48} {row.source:<12} {params:>13} {row.input_size:>5}  {tags or '-'}")
    print(f"\n{len(rows)} model{'s' if len(rows) != 1 else ''}")
    return 0


HANDLERS: dict = {"models": _models}
