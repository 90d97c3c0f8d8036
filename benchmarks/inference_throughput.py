"""Inference throughput over an image folder: labelloop's predict path vs a plain
`torch.inference_mode()` loop with the same network, in one process.

All sides read the same PNG files from a folder and run the default segmentation network
(random weights: speed does not depend on them). The plain loop decodes, normalises,
pads to a multiple of 32, runs the network in batches of the same size and memory format
as ours (channels-last on CPU) and takes the softmax argmax: the same arithmetic without
labelloop's bookkeeping, so the ratio measures that bookkeeping. A naive plain loop (one
image at a time, PyTorch's default memory format) shows what batching and memory format
are worth. Ours is measured twice: `predict_probs` (the same output: probabilities at full
resolution) and the kind's full `predict` (also instance shapes as RLE masks and
per-class counts, which is what scoring and `labelloop count` store). Runs alternate so
machine noise hits all sides alike; ratios are medians of the ratios within each repeat.

Usage: .venv/bin/python benchmarks/inference_throughput.py [--images 48] [--repeats 5]
Writes benchmarks/results/inference_throughput.json and .png.
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
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labelloop.imaging import decode_image, encode_png
from labelloop.synthetic import generate_smear, smear_seed
from labelloop.training.common import MEAN, STD
from labelloop.training.harness import quiet_and_threaded
from labelloop.training.segmentation.kind import KIND
from labelloop.training.segmentation.network import build_network
from labelloop.training.segmentation.predict import predict_probs
from labelloop.training.segmentation.recipe import SegmentationRecipe

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ["RBC", "WBC", "Platelets"]


def _tensor(path: Path) -> torch.Tensor:
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    h, w = img.shape[:2]
    x = torch.from_numpy(((img - MEAN) / STD).transpose(2, 0, 1)).unsqueeze(0)
    return F.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect")


def plain(model: torch.nn.Module, files: list[Path], batch: int) -> float:
    """Batches of equal-size images, channels-last, softmax argmax cropped back."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            chunk = [_tensor(f) for f in files[i : i + batch]]
            x = torch.cat(chunk).contiguous(memory_format=torch.channels_last)
            model(x).softmax(1).argmax(1).numpy()
    return len(files) / (time.perf_counter() - t0)


def plain_naive(model: torch.nn.Module, files: list[Path]) -> float:
    """One image at a time in PyTorch's default memory format."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            model(_tensor(f)).softmax(1)[0].argmax(0).numpy()
    return len(files) / (time.perf_counter() - t0)


def ours_probs(model: torch.nn.Module, files: list[Path], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = [decode_image(f.read_bytes(), name=str(f)) for f in files[i : i + batch]]
        for p in predict_probs(model, chunk, batch_size=batch):
            p.argmax(0)
    return len(files) / (time.perf_counter() - t0)


def ours_predict(
    model: torch.nn.Module, files: list[Path], recipe: SegmentationRecipe, batch: int
) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = [decode_image(f.read_bytes(), name=str(f)) for f in files[i : i + batch]]
        KIND.predict(model, chunk, recipe=recipe, labels=LABELS)
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    recipe = SegmentationRecipe(batch_size=args.batch)
    torch.manual_seed(0)
    model = build_network(recipe, len(LABELS) + 1, pretrained=False).eval()
    runs: dict[str, list[float]] = {
        "plain": [],
        "ours_probs": [],
        "ours_predict": [],
        "plain_naive": [],
    }
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, quiet_and_threaded():
        files = []
        for i in range(args.images):
            f = Path(tmp) / f"smear{i:03d}.png"
            f.write_bytes(encode_png(generate_smear(smear_seed(7, i), size=args.size).image))
            files.append(f)
        plain(model, files[:8], args.batch)  # warm-up
        for r in range(args.repeats):
            # plain and ours share the model's channels-last layout; naive converts back.
            model.to(memory_format=torch.channels_last)
            runs["plain"].append(plain(model, files, args.batch))
            runs["ours_probs"].append(ours_probs(model, files, args.batch))
            runs["ours_predict"].append(ours_predict(model, files, recipe, args.batch))
            model.to(memory_format=torch.contiguous_format)
            runs["plain_naive"].append(plain_naive(model, files))
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()))
        threads = torch.get_num_threads()
    med = {k: statistics.median(v) for k, v in runs.items()}

    def ratio(ours: str, base: str) -> float:
        """Median over repeats of the ratio within each repeat (load drifts between them)."""
        pairs = zip(runs[ours], runs[base], strict=True)
        return round(statistics.median(o / b for o, b in pairs), 4)

    result = {
        "benchmark": "inference_throughput",
        "model": f"{recipe.arch}/{recipe.encoder} depth {recipe.encoder_depth}",
        "images": args.images,
        "image_size": args.size,
        "images_per_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_images_per_s": {k: round(v, 2) for k, v in med.items()},
        "ratio_probs_vs_plain": ratio("ours_probs", "plain"),
        "ratio_predict_vs_plain": ratio("ours_predict", "plain"),
        "ratio_probs_vs_plain_naive": ratio("ours_probs", "plain_naive"),
        "target_ratio_min": 0.9,
        "threads": threads,
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "command": "python benchmarks/inference_throughput.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = ["plain loop", "ours: probs", "ours: + shapes,\ncounts", "naive plain\nloop"]
    ax.bar(
        names,
        [med["plain"], med["ours_probs"], med["ours_predict"], med["plain_naive"]],
        color=["#999", "#0072B2", "#56B4E9", "#ccc"],
    )
    ax.set_ylabel("images / s (median)")
    ax.set_title(f"inference, {args.images} images of {args.size} px, CPU")
    fig.tight_layout()
    fig.savefig(RESULTS / "inference_throughput.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
