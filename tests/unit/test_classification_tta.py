"""Test-time views of the classifier: the averaged softmax used by evaluation and prediction."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from labelloop.training.classification.data import SampleSet
from labelloop.training.classification.evaluate import evaluate_samples, predict_sample_probs
from labelloop.training.classification.predict import predict
from labelloop.training.classification.recipe import DEFAULT_TTA_VIEWS, ClassificationRecipe
from labelloop.training.classification.views import classification_views
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.passes import DIHEDRAL, transform_image

LABELS = ["a", "b"]
SIZE = 16


def _net() -> nn.Module:
    """A network that sees orientation (a linear map of the pixels), so views differ."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, len(LABELS)))
    with torch.no_grad():
        net[1].weight.mul_(20)
    return net.eval()


def _images(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def test_averaged_probs_are_the_mean_of_each_views_probs():
    net, images = _net(), np.stack(_images())
    single = [
        predict_sample_probs(net, [transform_image(i, f, k) for i in images]) for f, k in DIHEDRAL
    ]
    assert not np.allclose(single[0], single[1], atol=1e-3)  # the views do differ
    for n in (2, 4, 8):
        np.testing.assert_allclose(
            predict_sample_probs(net, images, views=n), np.mean(single[:n], 0), atol=1e-6
        )
    np.testing.assert_array_equal(predict_sample_probs(net, images, views=1), single[0])
    with pytest.raises(ValueError, match="views"):
        predict_sample_probs(net, images, views=9)


def test_prediction_averages_the_recipes_views_as_the_scoring_views_show():
    net, images = _net(), _images()
    recipe = ClassificationRecipe(image_size=SIZE)
    assert recipe.tta_views is None and recipe.views == DEFAULT_TTA_VIEWS == 8
    looks = classification_views(net, images, recipe=recipe, labels=LABELS, mode="tta", passes=8)
    for pred, views in zip(predict(net, images, recipe=recipe, labels=LABELS), looks, strict=True):
        mean = np.mean([v.arrays["probs"] for v in views], 0)
        np.testing.assert_allclose(pred.arrays["probs"], mean, atol=1e-6)
    one = recipe.with_overrides({"tta_views": 1})
    for pred, views in zip(predict(net, images, recipe=one, labels=LABELS), looks, strict=True):
        np.testing.assert_allclose(pred.arrays["probs"], views[0].arrays["probs"], atol=1e-6)


def test_evaluation_scores_the_averaged_views():
    net, images = _net(), np.stack(_images(8))
    probs = predict_sample_probs(net, images, views=8)
    plain = predict_sample_probs(net, images, views=1)
    assert (probs.argmax(1) != plain.argmax(1)).any()  # some decisions change with the views
    samples = SampleSet(images, probs.argmax(1).astype(np.int64), list(range(len(images))))
    assert evaluate_samples(net, samples, LABELS, views=8)["accuracy"] == 1.0
    assert evaluate_samples(net, samples, LABELS, views=1)["accuracy"] < 1.0


def test_unset_views_leave_the_recipe_hash_as_it_was():
    recipe = ClassificationRecipe()
    data = recipe.model_dump(mode="json")
    # Fields added after runs were recorded, unset: a recorded recipe's hash is unchanged.
    for later in (
        "init_from",
        "tta_views",
        "ema_decay",
        "ema_tau",
        "count_interval_margin",
        "mixup_alpha",
        "cutmix_alpha",
    ):
        assert data.pop(later) is None
    before = hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert recipe.recipe_hash() == before
    assert recipe.with_overrides({"tta_views": 1}).recipe_hash() != before
    assert recipe.with_overrides({"ema_decay": 0.99}).recipe_hash() != before
    # A detector's weight average was always part of its recipe: off stays in its hash.
    assert "ema_decay" in DetectionRecipe(ema_decay=None).canonical_json()
