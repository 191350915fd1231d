#!/usr/bin/env python3
"""fastai's own recipe, as its tutorials write it: `vision_learner` + `fine_tune` (issue 27's side by side).

Runs in the benchmark's own environment with fastai installed (bench/fastai_side_by_side.py makes it),
never in the project's. Prints one JSON line: validation accuracy after the last epoch.

    PYTHON bench/fastai_loop.py --data DIR --weights W --epochs 3 --size 64 --batch-size 32

DIR holds train/ and val/ class folders (as bench/plain_loop.py reads). W is a torchvision resnet18 state
dict (the same stand-in weights as every other benchmark); fastai cuts its body and adds its own head.
`fine_tune(E)` trains the new head alone for one epoch, then every layer for E epochs with discriminative
LRs, both one-cycle, at fastai's default base LR.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from fastai.vision.all import (CategoryBlock, DataBlock, GrandparentSplitter, ImageBlock, Normalize, Resize,
                               accuracy, get_image_files, imagenet_stats, parent_label, vision_learner)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files,
                      splitter=GrandparentSplitter(train_name="train", valid_name="val"), get_y=parent_label,
                      item_tfms=Resize(args.size), batch_tfms=Normalize.from_stats(*imagenet_stats))
    dls = block.dataloaders(args.data, bs=args.batch_size)

    def resnet18_from_file(*_, **__):
        model = torchvision.models.resnet18()
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        return model

    learn = vision_learner(dls, resnet18_from_file, pretrained=True, metrics=accuracy)  # "pretrained": keep them
    started = time.perf_counter()
    learn.fine_tune(args.epochs)
    _, val_accuracy = learn.validate()
    print(json.dumps({"val_accuracy": float(val_accuracy), "fit_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
