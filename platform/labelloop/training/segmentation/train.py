"""One segmentation training run, resumable, from a frozen manifest to a weights file.

`train_segmentation` writes everything into `workdir` (see `harness.fit`): Lightning
checkpoints and the final `model.pt`, a bare state_dict of the best epoch's network.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from labelloop.errors import ConfigError
from labelloop.training.harness import (
    WEIGHTS_FILE,
    Progress,
    TrainOutcome,
    fit,
    quiet_and_threaded,
    save_weights,
)
from labelloop.training.recipe import Recipe
from labelloop.training.segmentation.data import Fetch, SegmentationDataModule, split_items
from labelloop.training.segmentation.evaluate import evaluate_segmentation
from labelloop.training.segmentation.network import build_network
from labelloop.training.segmentation.system import SegmentationSystem

__all__ = ["TrainOutcome", "train_segmentation"]


def train_segmentation(
    manifest: dict[str, Any],
    recipe: Recipe,
    fetch: Fetch,
    workdir: Path,
    *,
    on_progress: Progress | None = None,
    log_csv: bool = False,
) -> TrainOutcome:
    """Train (or resume) the recipe's network on the manifest's train split; the best
    epoch by val Dice is kept and its val metrics go into the outcome."""
    t0 = time.monotonic()
    if recipe.task != "segmentation":
        raise ConfigError(f"train_segmentation got a {recipe.task!r} recipe")
    workdir = Path(workdir)
    has_val = bool(split_items(manifest, "val"))
    with quiet_and_threaded():
        pl.seed_everything(recipe.seed, workers=True, verbose=False)
        dm = SegmentationDataModule(manifest, recipe, fetch)
        class_weights = dm.class_weights()
        system = SegmentationSystem(
            build_network(recipe, dm.num_classes),
            recipe,
            dm.labels,
            class_weights=class_weights.tolist() if class_weights is not None else None,
        )
        result = fit(
            system,
            dm,
            recipe,
            manifest,
            workdir,
            monitor="val_dice",
            has_val=has_val,
            on_progress=on_progress,
            log_csv=log_csv,
        )
        weights_path = save_weights(result.state, workdir / WEIGHTS_FILE)
        network = system.network.cpu().eval()
        metrics = (
            evaluate_segmentation(
                network, manifest, fetch, split="val", labels=dm.labels, recipe=recipe
            )
            if has_val
            else {}
        )
    return TrainOutcome(
        weights_path=weights_path,
        metrics=metrics,
        epochs_run=result.epochs_run,
        epochs_completed=result.epochs_completed,
        best_epoch=result.best_epoch,
        last_epoch=result.epochs_completed,
        duration_s=time.monotonic() - t0,
        resumed=result.resumed,
        stopped_by_time=result.stopped_by_time,
        recipe_hash=recipe.recipe_hash(),
        history=result.history,
    )
