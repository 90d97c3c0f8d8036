"""Training-step overhead: labelloop's Lightning system + DataModule + harness vs a plain
PyTorch loop on the same network, batch, data and augmentation, in one process.

Both train the default segmentation recipe's network (smp U-Net, resnet18, depth 3) on the
same synthetic smears with the same albumentations pipeline, loss and batch size, for the
same number of optimiser steps. Ours goes through `harness.fit` exactly as a production
run does (checkpoint after every epoch, progress events, LR schedule); the plain loop is
`zero_grad / forward / loss / backward / step` over the same DataLoader. The plain loop
uses the same memory format as ours (channels-last on CPU), so the ratio measures the
harness and nothing else; a second plain loop in PyTorch's default memory format shows
what that choice is worth. Runs alternate (plain, ours, plain default, ...) so machine
noise hits every side alike; the figure is the median ratio of images/s.

Usage: .venv/bin/python benchmarks/training_overhead.py [--steps-per-epoch 20] [--repeats 5]
Writes benchmarks/results/training_overhead.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.datasets import synthetic_manifest
from labelloop.training.common import split_items
from labelloop.training.harness import fit, quiet_and_threaded
from labelloop.training.segmentation.data import SegmentationDataModule
from labelloop.training.segmentation.network import build_network, channels_last_on_cpu
from labelloop.training.segmentation.recipe import SegmentationRecipe
from labelloop.training.segmentation.system import SegmentationSystem, build_loss

RESULTS = Path(__file__).resolve().parent / "results"


def _recipe(steps_per_epoch: int, epochs: int, n_train: int, batch: int) -> SegmentationRecipe:
    repeats = max(1, steps_per_epoch * batch // n_train)
    return SegmentationRecipe(epochs=epochs, repeats=repeats, batch_size=batch)


def run_plain(
    manifest: dict, fetch, recipe: SegmentationRecipe, steps: int, channels_last: bool = True
) -> float:
    """images/s of a bare loop over the same DataLoader, network and loss."""
    pl.seed_everything(recipe.seed, verbose=False)
    dm = SegmentationDataModule(manifest, recipe, fetch)
    dm.setup("fit")
    loader = dm.train_dataloader()
    net = build_network(recipe, dm.num_classes)
    weights = dm.class_weights()
    loss_fn = build_loss(
        recipe.loss, weights.tolist() if weights is not None else None, recipe.mode
    )
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    fmt = torch.contiguous_format
    if channels_last and channels_last_on_cpu(net, torch.device("cpu")):
        fmt = torch.channels_last
    net.train()
    done, images = 0, 0
    t0 = time.perf_counter()
    while done < steps:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x.contiguous(memory_format=fmt)), y)
            loss.backward()
            opt.step()
            done += 1
            images += len(x)
            if done >= steps:
                break
    return images / (time.perf_counter() - t0)


def run_ours(manifest: dict, fetch, recipe: SegmentationRecipe, steps: int) -> float:
    """images/s of `harness.fit` (what a production run executes), val split removed so
    both sides do only training steps; checkpoints are still written every epoch."""
    train_only = {**manifest, "items": split_items(manifest, "train")}
    with tempfile.TemporaryDirectory() as tmp:
        pl.seed_everything(recipe.seed, verbose=False)
        dm = SegmentationDataModule(train_only, recipe, fetch)
        weights = dm.class_weights()
        system = SegmentationSystem(
            build_network(recipe, dm.num_classes),
            recipe,
            dm.labels,
            class_weights=weights.tolist() if weights is not None else None,
        )
        t0 = time.perf_counter()
        fit(system, dm, recipe, train_only, Path(tmp), monitor="val_dice", has_val=False)
        seconds = time.perf_counter() - t0
    return steps * recipe.batch_size / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n_train = 16
    manifest, fetch = synthetic_manifest({"train": n_train}, size=256)
    recipe = _recipe(args.steps_per_epoch, args.epochs, n_train, args.batch)
    steps = args.epochs * (n_train * recipe.repeats // args.batch)
    plain, ours, default = [], [], []
    load_start = os.getloadavg()
    with quiet_and_threaded():
        run_plain(manifest, fetch, recipe, 4)  # warm-up: allocator, kernels
        for r in range(args.repeats):
            plain.append(run_plain(manifest, fetch, recipe, steps))
            ours.append(run_ours(manifest, fetch, recipe, steps))
            default.append(run_plain(manifest, fetch, recipe, steps, channels_last=False))
            print(
                f"repeat {r + 1}: plain {plain[-1]:.1f} img/s, ours {ours[-1]:.1f} img/s, "
                f"plain (default memory format) {default[-1]:.1f} img/s",
                flush=True,
            )
        threads = torch.get_num_threads()
    ratio = statistics.median(p / o for p, o in zip(plain, ours, strict=True))
    ratio_default = statistics.median(p / o for p, o in zip(default, ours, strict=True))
    result = {
        "benchmark": "training_overhead",
        "model": f"{recipe.arch}/{recipe.encoder} depth {recipe.encoder_depth}",
        "batch": recipe.batch_size,
        "crop": recipe.image_size,
        "steps_per_run": steps,
        "epochs_per_run": args.epochs,
        "plain_images_per_s": [round(v, 2) for v in plain],
        "ours_images_per_s": [round(v, 2) for v in ours],
        "plain_default_format_images_per_s": [round(v, 2) for v in default],
        "slowdown_median": round(ratio, 4),
        "slowdown_vs_default_format_median": round(ratio_default, 4),
        "target_slowdown_max": 1.10,
        "threads": threads,
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "command": "python benchmarks/training_overhead.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = range(1, len(plain) + 1)
    ax.plot(xs, plain, "o-", label="plain PyTorch loop")
    ax.plot(xs, ours, "s-", label="labelloop (Lightning harness)")
    ax.plot(xs, default, "^:", label="plain loop, default memory format")
    ax.set_xlabel("repeat (alternating)")
    ax.set_ylabel("training images / s")
    ax.set_title(f"training throughput, slowdown {ratio:.3f}x (target <= 1.10x)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "training_overhead.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
