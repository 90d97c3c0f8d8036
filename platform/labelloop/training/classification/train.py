"""One classifier training run, resumable, from a frozen manifest to a weights file.

Like `train_segmentation`: everything goes into `workdir` (Lightning checkpoints, then
`model.pt`, a bare state_dict of the best epoch by validation macro-F1).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from labelloop.errors import ConfigError
from labelloop.training.classification.data import ClassificationDataModule
from labelloop.training.classification.evaluate import evaluate_samples
from labelloop.training.classification.network import build_classifier
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.classification.system import ClassificationSystem
from labelloop.training.harness import (
    WEIGHTS_FILE,
    Progress,
    TrainOutcome,
    fit,
    quiet_and_threaded,
    save_weights,
)
from labelloop.training.segmentation.data import Fetch


def train_classification(
    manifest: dict[str, Any],
    recipe: ClassificationRecipe,
    fetch: Fetch,
    workdir: Path,
    *,
    on_progress: Progress | None = None,
    log_csv: bool = False,
) -> TrainOutcome:
    """Train (or resume) the recipe's classifier on the train split; the epoch with the
    best val macro-F1 is kept and its val metrics go into the outcome."""
    t0 = time.monotonic()
    if recipe.task != "classification":
        raise ConfigError(f"train_classification got a {recipe.task!r} recipe")
    workdir = Path(workdir)
    with quiet_and_threaded():
        pl.seed_everything(recipe.seed, workers=True, verbose=False)
        dm = ClassificationDataModule(manifest, recipe, fetch)
        dm.setup("fit")
        assert dm.val_set is not None
        has_val = len(dm.val_set) > 0
        weights = dm.class_weights()
        system = ClassificationSystem(
            build_classifier(recipe, dm.num_classes),
            recipe,
            dm.labels,
            class_weights=weights.tolist() if weights is not None else None,
        )
        result = fit(
            system,
            dm,
            recipe,
            manifest,
            workdir,
            monitor="val_macro_f1",
            has_val=has_val,
            on_progress=on_progress,
            log_csv=log_csv,
        )
        weights_path = save_weights(result.state, workdir / WEIGHTS_FILE)
        network = system.network.cpu().eval()
        metrics: dict[str, Any] = {}
        if has_val:
            metrics = evaluate_samples(network, dm.val_set.samples, dm.labels, recipe.batch_size)
            metrics["split"] = "val"
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
