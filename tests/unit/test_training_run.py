"""End-to-end training on tiny synthetic discs: real Lightning, real network, two CPU cores."""

from __future__ import annotations

import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.training.segmentation.kind import KIND
from labelloop.training.segmentation.predict import load_model, predict_probs
from labelloop.training.segmentation.recipe import SegmentationRecipe
from tests.unit.segmentation_fixtures import draw, make_manifest

TINY = {
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [16, 16, 8],
    "image_size": 64,
    "batch_size": 3,
    "lr": 0.01,
}


@pytest.fixture(scope="module")
def data():
    return make_manifest({"train": 6, "val": 2, "test": 2})


def test_two_epochs_produce_loadable_weights_and_metrics(data, tmp_path):
    manifest, blobs = data
    events: list[dict] = []
    recipe = SegmentationRecipe(epochs=2, **TINY)
    out = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path, on_progress=events.append)

    assert (out.epochs_run, out.epochs_completed, out.resumed) == (2, 2, False)
    assert out.best_epoch in (1, 2)
    assert out.recipe_hash == recipe.recipe_hash()
    finals = [e for e in events if e["final"]]
    assert [e["epoch"] for e in finals] == [1, 2]
    assert all(e["step"] > 0 and e["loss"] > 0 and "val_dice" in e for e in finals)
    assert out.metrics["n_images"] == 2 and out.metrics["split"] == "val"
    assert set(out.metrics["per_class"]) == set(manifest["labels"])
    assert (tmp_path / "last.ckpt").exists()

    state = torch.load(out.weights_path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = load_model(out.weights_path.read_bytes(), recipe, num_classes=3)
    image, _ = draw([("Red", 20, 20, 8)])
    (probs,) = predict_probs(model, [image])
    assert probs.shape == (3, 64, 64)
    assert torch.allclose(torch.from_numpy(probs.sum(0)), torch.ones(64, 64), atol=1e-4)


def test_bf16_training_saves_float32_weights(data, tmp_path):
    manifest, blobs = data
    recipe = SegmentationRecipe(epochs=1, precision="bf16", **TINY)
    out = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path)
    state = torch.load(out.weights_path, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    assert out.metrics["mean_dice"] is not None


def test_resume_from_last_checkpoint_runs_only_the_missing_epochs(data, tmp_path):
    manifest, blobs = data
    first = KIND.train(manifest, SegmentationRecipe(epochs=1, **TINY), blobs.__getitem__, tmp_path)
    assert (first.epochs_run, first.epochs_completed) == (1, 1)

    events: list[dict] = []
    second = KIND.train(
        manifest,
        SegmentationRecipe(epochs=2, **TINY),
        blobs.__getitem__,
        tmp_path,
        on_progress=events.append,
    )
    assert second.resumed
    assert (second.epochs_run, second.epochs_completed) == (1, 2)
    assert [e["epoch"] for e in events if e["final"]] == [2]

    # Delivered again once finished: nothing left to train, the same weights come back.
    third = KIND.train(manifest, SegmentationRecipe(epochs=2, **TINY), blobs.__getitem__, tmp_path)
    assert (third.epochs_run, third.epochs_completed) == (0, 2)
    assert third.best_epoch == second.best_epoch


def test_checkpoint_of_another_recipe_is_not_resumed(data, tmp_path):
    manifest, blobs = data
    KIND.train(manifest, SegmentationRecipe(epochs=1, **TINY), blobs.__getitem__, tmp_path)
    with pytest.raises(ConfigError, match="different recipe"):
        KIND.train(
            manifest,
            SegmentationRecipe(epochs=1, **{**TINY, "lr": 0.02}),
            blobs.__getitem__,
            tmp_path,
        )


def test_training_without_val_split_keeps_last_epoch(tmp_path):
    manifest, blobs = make_manifest({"train": 4})
    out = KIND.train(manifest, SegmentationRecipe(epochs=1, **TINY), blobs.__getitem__, tmp_path)
    assert out.metrics == {} and out.best_epoch == 1 and out.weights_path.exists()


def test_unreadable_last_checkpoint_is_set_aside_and_training_starts_over(data, tmp_path):
    manifest, blobs = data
    (tmp_path / "last.ckpt").write_bytes(b"truncated by a killed worker")
    out = KIND.train(manifest, SegmentationRecipe(epochs=1, **TINY), blobs.__getitem__, tmp_path)
    assert not out.resumed and out.epochs_run == 1
    assert (tmp_path / "last.unreadable").read_bytes() == b"truncated by a killed worker"


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tmp_path):
    # Val images without shapes: val Dice is 0 every epoch, so only epoch 1 is "best".
    manifest, blobs = make_manifest({"train": 4, "val": 1})
    for item in manifest["items"]:
        if item["split"] == "val":
            item["shapes"] = []
    out = KIND.train(manifest, SegmentationRecipe(epochs=2, **TINY), blobs.__getitem__, tmp_path)
    assert out.best_epoch == 1
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 1  # 0-based: 2nd
    more = KIND.train(manifest, SegmentationRecipe(epochs=3, **TINY), blobs.__getitem__, tmp_path)
    assert (more.epochs_run, more.epochs_completed, more.best_epoch) == (1, 3, 1)
