"""One detection training run, resumable, from a frozen manifest to a weights file.

Like `train_segmentation`: everything goes into `workdir` (Lightning checkpoints and the
final `model.pt`, the best epoch's weights by val mAP@0.5, EMA weights when enabled).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from labelloop.errors import ConfigError
from labelloop.training.detection.data import DetectionDataModule, Fetch
from labelloop.training.detection.evaluate import evaluate_detection
from labelloop.training.detection.network import build_detector
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.detection.system import DetectionSystem
from labelloop.training.harness import (
    WEIGHTS_FILE,
    Progress,
    TrainOutcome,
    fit,
    quiet_and_threaded,
    save_weights,
)
from labelloop.training.segmentation.data import split_items


def train_detection(
    manifest: dict[str, Any],
    recipe: DetectionRecipe,
    fetch: Fetch,
    workdir: Path,
    *,
    on_progress: Progress | None = None,
    log_csv: bool = False,
) -> TrainOutcome:
    """Train (or resume) the recipe's detector on the train split; the best epoch by
    val mAP@0.5 is kept and its val metrics go into the outcome."""
    t0 = time.monotonic()
    if recipe.task != "detection":
        raise ConfigError(f"train_detection got a {recipe.task!r} recipe")
    workdir = Path(workdir)
    has_val = bool(split_items(manifest, "val"))
    with quiet_and_threaded():
        pl.seed_everything(recipe.seed, workers=True, verbose=False)
        dm = DetectionDataModule(manifest, recipe, fetch)
        system = DetectionSystem(build_detector(recipe, dm.num_classes), recipe, dm.labels)
        result = fit(
            system,
            dm,
            recipe,
            manifest,
            workdir,
            monitor="val_map50",
            has_val=has_val,
            on_progress=on_progress,
            log_csv=log_csv,
        )
        weights_path = save_weights(result.state, workdir / WEIGHTS_FILE)
        network = system.network.cpu().eval()
        metrics = (
            evaluate_detection(
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
