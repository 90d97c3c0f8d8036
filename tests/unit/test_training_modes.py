"""Binary and instance output modes: training, test-time augmentation and predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from labelloop.scoring import get_method
from labelloop.training.segmentation.instances import instance_targets, rasterize_instances
from labelloop.training.segmentation.kind import KIND
from labelloop.training.segmentation.predict import (
    predict_probs,
    prediction_from_output,
    uncertainty_probs,
)
from labelloop.training.segmentation.recipe import SegmentationRecipe
from tests.unit.segmentation_fixtures import LABELS, draw, make_manifest

TINY = {
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [16, 16, 8],
    "image_size": 64,
    "batch_size": 4,
    "lr": 0.01,
}


def test_binary_mode_learns_the_disc_masks(tmp_path):
    manifest, blobs = make_manifest({"train": 8, "val": 2})
    recipe = SegmentationRecipe(mode="binary", epochs=8, **TINY)
    events: list[dict] = []
    out = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path, on_progress=events.append)
    dice = [e["val_dice"] for e in events if e["final"]]
    assert dice[-1] > dice[0] + 0.3 and max(dice) > 0.6
    assert out.metrics["mode"] == "binary" and out.metrics["mean_dice"] > 0.6
    assert out.metrics["pixel_error"] < 0.06

    model = KIND.load(out.weights_path, recipe, LABELS)
    image, _ = draw([("Red", 20, 20, 8), ("Blue", 44, 44, 7)])
    (pred,) = KIND.predict(model, [image], recipe=recipe, labels=LABELS)
    assert pred.arrays["label_probs"].shape == (2, 64, 64)
    assert pred.arrays["probs"].shape == (2, 64, 64)
    assert pred.counts == {"Red": 1, "Blue": 1}
    assert sorted(s.label for s in pred.shapes) == ["Blue", "Red"]


class _Asymmetric(nn.Module):
    """A fixed network that is not flip- or rotation-equivariant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, kernel_size=5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + torch.linspace(-2, 2, x.shape[-1])


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_tta_averages_the_eight_dihedral_views(activation):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    net = _Asymmetric()
    (plain,) = predict_probs(net, [image], activation=activation)
    (tta,) = predict_probs(net, [image], activation=activation, tta=True)
    (tta_flipped,) = predict_probs(net, [image[:, ::-1].copy()], activation=activation, tta=True)
    (tta_turned,) = predict_probs(net, [np.rot90(image).copy()], activation=activation, tta=True)
    assert not np.allclose(plain, plain[:, :, ::-1], atol=1e-3)  # the net itself is not
    # The average over all views is: a flipped or turned input gives the same map, moved.
    assert np.allclose(tta_flipped, tta[:, :, ::-1], atol=1e-5)
    assert np.allclose(tta_turned, np.rot90(tta, axes=(1, 2)), atol=1e-5)


def test_binary_probs_become_a_distribution_the_scorers_accept():
    p = np.array([[[0.9, 0.5]], [[0.99, 0.2]]], np.float32)  # (L=2, 1, 2)
    probs = uncertainty_probs(p)
    assert probs.shape == (2, 1, 2) and np.allclose(probs.sum(0), 1.0)
    np.testing.assert_allclose(probs[1], [[0.9, 0.5]], rtol=1e-6)  # the least certain label
    np.testing.assert_allclose(uncertainty_probs(p[:1])[1], [[0.9, 0.5]], rtol=1e-6)
    score = get_method("entropy_mean").score
    assert score(uncertainty_probs(np.full((1, 4, 4), 0.5))) == pytest.approx(1.0)
    assert score(probs) > score(uncertainty_probs(np.full((2, 1, 2), 0.99)))


def test_instance_prediction_outlines_and_counts_each_touching_cell():
    _, shapes = draw([("Red", 20, 24, 8), ("Red", 34, 24, 8), ("Blue", 50, 50, 6)])
    inst, classes = rasterize_instances(shapes, LABELS, 64, 64)
    probs = np.eye(5, dtype=np.float32)[instance_targets(inst, classes, 2)].transpose(2, 0, 1)
    recipe = SegmentationRecipe(mode="instance")
    pred = prediction_from_output(probs, recipe, LABELS)
    assert pred.counts == {"Red": 2, "Blue": 1}
    assert sorted(s.label for s in pred.shapes) == ["Blue", "Red", "Red"]
    assert pred.arrays["instances"].max() == 3 and pred.arrays["probs"].shape == (5, 64, 64)
    one_per_class = np.eye(3, dtype=np.float32)[classes[inst]].transpose(2, 0, 1)
    semantic = prediction_from_output(one_per_class, SegmentationRecipe(), LABELS)
    assert semantic.counts == {"Red": 1, "Blue": 1}  # without instances the pair is one blob
