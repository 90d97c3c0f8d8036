"""A short training on each GPU setting beside the CPU: images/s, and that it learns.

The default segmentation recipe (U-Net) trains on synthetic smears (identical on every
machine, no data files needed) for a few epochs on one GPU (bf16 where native), on every
GPU of the machine with DDP when there are several, and briefly on the CPU. Without CUDA
it says so and exits 0: the CPU paths are then the tested ones.

Usage: .venv/bin/python benchmarks/gpu_check.py [--epochs 3] [--images 64]
Writes benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.datasets import synthetic_manifest  # noqa: E402
from labelloop.training.harness import DEVICES_ENV, device_plan, trainer_precision  # noqa: E402
from labelloop.training.kind import get_kind  # noqa: E402
from labelloop.training.segmentation.recipe import SegmentationRecipe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def train_on(devices: str, manifest: dict, fetch: Any, epochs: int) -> dict[str, Any]:
    """One run under LABELLOOP_TRAIN_DEVICES=devices; images/s over the training loop."""
    os.environ[DEVICES_ENV] = devices
    plan = device_plan()
    recipe = SegmentationRecipe(epochs=epochs, batch_size=8, image_size=256)
    n_train = sum(1 for it in manifest["items"] if it["split"] == "train")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        outcome = get_kind("segmentation").train(manifest, recipe, fetch, Path(tmp))
        wall = time.monotonic() - started
    row = {
        "devices": devices,
        "accelerator": plan.accelerator,
        "device_count": plan.devices,
        "strategy": plan.strategy,
        "precision": trainer_precision(recipe.precision, plan),
        "epochs": outcome.epochs_completed,
        "train_loop_s": round(outcome.duration_s, 1),
        "wall_s": round(wall, 1),
        "images_per_s": round(n_train * outcome.epochs_completed / outcome.duration_s, 1),
        "val_mean_dice": outcome.metrics.get("mean_dice"),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cpu-epochs", type=int, default=1)
    ap.add_argument("--images", type=int, default=64, help="training images (256 px smears)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}): nothing to measure. "
            "Training runs on the CPU here; the CPU paths are the tested ones."
        )
        return 0
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"gpu_check: {len(names)} GPU(s): {', '.join(names)}", flush=True)
    manifest, fetch = synthetic_manifest({"train": args.images, "val": 8}, size=256)
    rows = [train_on("1", manifest, fetch, args.epochs)]
    if len(names) > 1:
        rows.append(train_on("all", manifest, fetch, args.epochs))
    rows.append(train_on("cpu", manifest, fetch, args.cpu_epochs))
    cpu = rows[-1]["images_per_s"]
    for row in rows:
        row["speedup_vs_cpu"] = round(row["images_per_s"] / cpu, 1) if cpu else None
    args.results.mkdir(parents=True, exist_ok=True)
    out = {"gpus": names, "torch": torch.__version__, "cuda": torch.version.cuda, "runs": rows}
    (args.results / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['devices']:>4} ({row['accelerator']} x{row['device_count']}, "
            f"{row['precision']}): {row['images_per_s']} images/s, "
            f"{row['speedup_vs_cpu']}x the CPU"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
