#!/usr/bin/env python3
"""The plain tutorial loop Transfer Studio is measured against, as people write it themselves.

ImageFolder + PIL transforms + DataLoader + model + optimizer; everything is recomputed every epoch.
It keeps the tutorial's two hidden bugs on purpose: model.train() lets a "frozen" backbone's
BatchNorm statistics drift, and the fine-tuning recipe leaves bn1 out of every optimizer group.

    python bench/plain_loop.py --data DIR(with train/ and val/) --mode fe|ft --weights FILE ...

Prints one JSON line: per-epoch seconds, images/s and the final validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=("fe", "ft"), required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--weights", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--augment", choices=("none", "standard"), default="none")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    resize = round(args.size * 256 / 224)
    mean, std = MEAN, STD
    if args.arch.startswith("timm:"):  # the model's own normalization, from its pretrained config
        import timm

        config = timm.data.resolve_data_config({}, model=timm.create_model(args.arch[5:], pretrained=False))
        mean, std = config["mean"], config["std"]
    eval_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(args.size), transforms.ToTensor(),
                                  transforms.Normalize(mean, std)])
    train_tf = eval_tf if args.augment == "none" else transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std)])
    train_set = datasets.ImageFolder(f"{args.data}/train", train_tf)
    val_set = datasets.ImageFolder(f"{args.data}/val", eval_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               num_workers=args.workers)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)

    if args.arch.startswith("timm:"):  # as timm's README fine-tunes: create_model, then a new classifier
        import timm

        model = timm.create_model(args.arch[5:], pretrained=False)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, weights_only=True))
        model.reset_classifier(len(train_set.classes))
        head = model.get_classifier()
    else:
        model = torchvision.models.get_model(args.arch)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, weights_only=True))
        model.fc = head = nn.Linear(model.fc.in_features, len(train_set.classes))
    if args.mode == "fe":
        for param in model.parameters():
            param.requires_grad = False
        for param in head.parameters():
            param.requires_grad = True
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.AdamW([
            {"params": model.conv1.parameters(), "lr": 1e-5},
            {"params": model.layer1.parameters(), "lr": 1e-5},
            {"params": model.layer2.parameters(), "lr": 5e-5},
            {"params": model.layer3.parameters(), "lr": 1e-4},
            {"params": model.layer4.parameters(), "lr": 5e-4},
            {"params": model.fc.parameters(), "lr": 1e-3},
        ], weight_decay=0.01)
    model.to(device)
    criterion = nn.CrossEntropyLoss()
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        seen = 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                pred = model(x.to(device)).argmax(1).cpu()
                correct += int((pred == y).sum())
                total += len(y)
        epochs.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start, "train_seconds": train_seconds,
                       "images_per_second": seen / train_seconds, "val_accuracy": correct / total})
    print(json.dumps({"epochs": epochs, "val_accuracy": epochs[-1]["val_accuracy"]}))


if __name__ == "__main__":
    main()
