"""Aggregations, multi-pass methods (MC dropout, TTA), the passes themselves and embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from labelloop.errors import ConfigError
from labelloop.scoring import get_method
from labelloop.training.kind import Prediction, View
from labelloop.training.passes import DIHEDRAL, mc_dropout, transform_image, unmap_boxes
from labelloop.training.segmentation.predict import predict_prob_views, predict_probs
from labelloop.training.segmentation.recipe import SegmentationRecipe
from labelloop.training.segmentation.views import embed_images


def _binary_probs(q: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - q, q])


def test_top10_ranks_one_doubtful_region_above_a_faint_everywhere_doubt():
    faint = np.full((32, 32), 0.75)  # every pixel a little unsure
    spot = np.full((32, 32), 0.999)
    spot[:12, :12] = 0.5  # one region (14 % of the image) a coin toss
    mean, top = get_method("entropy_mean"), get_method("entropy_top10")
    assert mean.score(_binary_probs(faint)) > mean.score(_binary_probs(spot))
    assert top.score(_binary_probs(spot)) > top.score(_binary_probs(faint))
    assert top.score(_binary_probs(np.full((8, 8), 0.5))) == pytest.approx(1.0)


def test_foreground_weighting_ignores_certain_background():
    # Both images: cells (foreground) equally doubtful; the second has far more background.
    def image(bg_pixels: int) -> dict:
        fg = np.tile([0.1, 0.45, 0.45], (16, 1)).T  # background, cell A, cell B: unsure
        bg = np.tile([0.98, 0.01, 0.01], (bg_pixels, 1)).T
        return {"probs": np.concatenate([fg, bg], axis=1)[:, None, :]}

    fg_w, mean = get_method("entropy_fg"), get_method("entropy_mean")
    small, big = image(16), image(100)
    assert mean.score_arrays(big) < 0.5 * mean.score_arrays(small)
    assert fg_w.score_arrays(big) > 0.6 * fg_w.score_arrays(small)
    # Binary mode: the foreground is the most likely label's sigmoid.
    q = np.array([[[0.5, 0.02, 0.02]]])
    binary = {"probs": _binary_probs(q[0]), "label_probs": q}
    assert 0 < fg_w.score_arrays(binary) <= 1


def _views(stack: list[np.ndarray]) -> list[View]:
    return [View({"probs": p}) for p in stack]


def test_bald_separates_disagreement_from_agreed_ambiguity():
    agreed = [_binary_probs(np.full((4, 4), 0.5))] * 8  # every pass says 50/50
    flipping = [_binary_probs(np.full((4, 4), 0.02 if t % 2 else 0.98)) for t in range(8)]
    bald, var = get_method("bald", "segmentation"), get_method("mc_variance", "segmentation")
    pred = Prediction([], {}, 0.5, {"probs": agreed[0]})
    assert bald.score_prediction(pred, _views(agreed)) == pytest.approx(0.0, abs=1e-9)
    assert bald.score_prediction(pred, _views(flipping)) > 0.8
    assert var.score_prediction(pred, _views(agreed)) == pytest.approx(0.0, abs=1e-12)
    assert var.score_prediction(pred, _views(flipping)) > 0.8
    with pytest.raises(ConfigError, match="needs mc passes"):
        bald.score_prediction(pred, [])


def test_detection_single_pass_methods():
    ce, conf = get_method("class_entropy_mean"), get_method("one_minus_conf_mean")
    sure = {"class_probs": np.array([[0.95, 0.01, 0.01]]), "scores": np.array([0.95])}
    torn = {"class_probs": np.array([[0.5, 0.45, 0.01]]), "scores": np.array([0.5])}
    assert ce.score_arrays(sure) < ce.score_arrays(torn) <= 1
    assert conf.score_arrays(sure) == pytest.approx(0.05)
    assert conf.score_arrays({"scores": np.zeros(0)}) == 1.0
    assert ce.score_arrays({"class_probs": np.zeros((0, 3))}) == 1.0


def _det(boxes: list[list[float]], labels: list[int]) -> dict:
    n = len(boxes)
    return {
        "boxes": np.array(boxes, np.float32).reshape(n, 4),
        "labels": np.array(labels, np.int64),
        "scores": np.full(n, 0.9, np.float32),
        "class_probs": np.full((n, 3), 0.3, np.float32),
    }


def test_tta_localisation_and_count_variance():
    base = _det([[10, 10, 30, 30], [50, 50, 70, 70]], [0, 1])
    stable = [View(_det([[10, 10, 30, 30], [50, 50, 70, 70]], [0, 1]))] * 7
    moving = [View(_det([[15, 15, 35, 35], [50, 50, 70, 70], [0, 0, 5, 5]], [0, 1, 2]))] * 7
    loc, cnt = get_method("tta_localisation"), get_method("count_variance")
    pred = Prediction([], {}, 0.9, base)
    assert loc.score_prediction(pred, stable) == pytest.approx(0.0, abs=1e-6)
    assert 0.2 < loc.score_prediction(pred, moving) < 1
    assert cnt.score_prediction(pred, stable) == pytest.approx(0.0)
    alternating = [
        View(_det([[10, 10, 30, 30]] * (1 + t % 2 * 3), [0] * (1 + t % 2 * 3))) for t in range(7)
    ]
    assert cnt.score_prediction(pred, alternating) > 0.1
    empty = Prediction([], {}, 0.0, _det([], []))
    assert loc.score_prediction(empty, stable) == 1.0


def test_classification_bald():
    bald = get_method("bald", "classification")
    pred = Prediction([], {}, 0.5, {"probs": np.array([0.5, 0.5])})
    agreed = [View({"probs": np.array([0.5, 0.5])})] * 6
    split = [View({"probs": np.array([0.99, 0.01] if t % 2 else [0.01, 0.99])}) for t in range(6)]
    assert bald.score_prediction(pred, agreed) == pytest.approx(0.0, abs=1e-9)
    assert bald.score_prediction(pred, split) > 0.8


@pytest.mark.parametrize(("flip", "k"), DIHEDRAL)
def test_boxes_found_in_a_turned_image_map_back(flip, k):
    img = np.zeros((30, 50, 3), np.uint8)
    img[5:9, 20:27] = 255  # rows 5-8, columns 20-26: box (20, 5, 27, 9)
    turned = transform_image(img, flip, k)
    rows, cols = np.nonzero(turned[..., 0])
    found = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32)
    np.testing.assert_allclose(unmap_boxes(found, flip, k, img.shape[:2]), [[20, 5, 27, 9]])


class _Asym(nn.Module):
    """Logits that depend on position (not flip-invariant) plus optional dropout."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.drop = nn.Dropout2d(p)
        self.head = nn.Conv2d(16, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
        return self.bn(self.head(self.drop(self.conv(x)))) + torch.cat([ramp, -ramp], 1)


def test_tta_views_average_to_tta_probs_and_mc_needs_dropout():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 64, 3), dtype=np.uint8) for _ in range(2)]
    net = _Asym().eval()
    views = predict_prob_views(net, images, mode="tta")
    assert views[0].shape == (8, 2, 40, 64)
    for v, avg in zip(views, predict_probs(net, images, tta=True), strict=True):
        np.testing.assert_allclose(v.mean(0), avg, atol=1e-6)
    assert not np.allclose(views[0][0], views[0][4], atol=1e-3)  # views differ
    with pytest.raises(ConfigError, match="needs dropout"):
        predict_prob_views(net, images, mode="mc", passes=4)

    drop = _Asym(p=0.5).eval()
    first = predict_prob_views(drop, images, mode="mc", passes=4)
    again = predict_prob_views(drop, images, mode="mc", passes=4)
    assert not np.allclose(first[0][0], first[0][1])  # passes differ...
    np.testing.assert_allclose(first[0], again[0])  # ...reproducibly
    assert not drop.training and not drop.drop.training  # modes restored
    with mc_dropout(drop, "hint"):
        assert drop.drop.training and not drop.bn.training


def test_segmentation_dropout_and_embeddings():
    from labelloop.training.segmentation.network import build_network

    recipe = SegmentationRecipe(encoder_depth=3, dropout=0.2)
    net = build_network(recipe, 3, pretrained=False).eval()
    assert isinstance(net.segmentation_head[0], nn.Dropout2d)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    emb = embed_images(net, images)
    assert emb.shape[0] == 3 and emb.ndim == 2 and np.isfinite(emb).all()
    np.testing.assert_allclose(embed_images(net, images[:1]), emb[:1], rtol=1e-4, atol=1e-5)
