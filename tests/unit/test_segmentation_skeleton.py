from __future__ import annotations

import numpy as np
import pytest
import torch

from labelloop.training.segmentation.data import IGNORE_INDEX
from labelloop.training.segmentation.recipe import SegmentationRecipe
from labelloop.training.segmentation.skeleton import SkeletonRecallLoss, tubed_skeleton
from labelloop.training.segmentation.system import build_loss

BIG = 20.0  # a logit that means "certainly foreground"


def _band(width: int, size: int = 64) -> np.ndarray:
    """A horizontal band `width` px thick across the middle 48 px of the image."""
    mask = np.zeros((size, size), bool)
    top = size // 2 - width // 2
    mask[top : top + width, 8:56] = True
    return mask


def test_the_tube_is_three_pixels_wide_along_the_structure_and_inside_it():
    for width in (3, 9, 15):
        mask = _band(width)
        tube = tubed_skeleton(mask)
        assert not (tube & ~mask).any()
        # the centre line runs along the band (its ends shorten by about half the width)
        assert tube.any(0)[16:48].all()
        assert set(tube[:, 16:48].sum(0).tolist()) == {3}  # three pixels thick, whatever the width
    assert not tubed_skeleton(np.zeros((8, 8), bool)).any()


def _binary_logits(pred: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(pred, BIG, -BIG).astype(np.float32))[None, None]


def test_a_gap_costs_its_share_of_the_length_whatever_the_width():
    loss = SkeletonRecallLoss(1.0, "binary")
    for width in (3, 11):
        truth = _band(width)
        target = torch.from_numpy(truth.astype(np.int64))[None, None]
        assert float(loss(_binary_logits(truth), target)) == pytest.approx(0.0, abs=1e-6)
        gap = truth.copy()
        gap[:, 8:24] = False  # a third of the band's 48 px missing
        tube = tubed_skeleton(truth)
        share = tube[:, 8:24].sum() / tube.sum()
        assert float(loss(_binary_logits(gap), target)) == pytest.approx(share, abs=1e-4)
        assert 0.25 < share < 0.4
    # the same gap costs a pixel loss in proportion to the width: that is what the term fixes
    thin, thick = _band(3), _band(11)
    assert thick[:, 8:24].sum() / thin[:, 8:24].sum() == pytest.approx(11 / 3)


def test_softmax_modes_read_each_label_and_skip_padding():
    truth = np.zeros((1, 32, 32), np.int64)
    truth[0, 10:20, 4:28] = 1  # label 1 interior
    truth[0, 9, 4:28] = 3  # label 1 contour (instance mode: classes 1..L, L+1..2L, L=2)
    truth[0, 24:28, 4:28] = IGNORE_INDEX  # padding: never foreground
    target = torch.from_numpy(truth)
    # a network that is sure of background everywhere misses the whole skeleton
    logits = torch.full((1, 5, 32, 32), -BIG)
    logits[:, 0] = BIG
    assert float(SkeletonRecallLoss(2.0, "instance")(logits, target)) == pytest.approx(2.0)
    # one that calls the label's contour class everywhere covers it (contour counts)
    logits[:, 0], logits[:, 3] = -BIG, BIG
    assert float(SkeletonRecallLoss(2.0, "instance")(logits, target)) == pytest.approx(
        0.0, abs=1e-5
    )
    # multiclass: label 1 only; an image without any foreground costs nothing
    multi = torch.zeros(1, 3, 32, 32, requires_grad=True)
    empty = torch.zeros((1, 32, 32), dtype=torch.int64)
    value = SkeletonRecallLoss(1.0, "multiclass")(multi, empty)
    assert float(value.detach()) == 0.0
    value.backward()  # still part of the graph


def test_build_loss_adds_the_term_and_its_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 48, 48, requires_grad=True)
    target = torch.from_numpy(np.stack([_band(5, 48), _band(9, 48)]).astype(np.int64))[:, None]
    plain = build_loss("dice_bce", mode="binary")(logits, target)
    with_term = build_loss("dice_bce", mode="binary", skeleton_recall=0.5)(logits, target)
    term = SkeletonRecallLoss(0.5, "binary")(logits, target)
    assert float(with_term) == pytest.approx(float(plain + term), rel=1e-6)
    assert 0.0 < float(term) < 0.5
    (grad,) = torch.autograd.grad(term, logits)
    tube = torch.from_numpy(np.stack([tubed_skeleton(_band(5, 48)), tubed_skeleton(_band(9, 48))]))
    assert bool((grad[:, 0][tube] < 0).all())  # pushes the skeleton's pixels up
    assert bool((grad[:, 0][~tube] == 0).all())  # and no others


def test_recipe_field_is_checked_and_keeps_old_run_hashes():
    plain = SegmentationRecipe(mode="binary")
    assert "skeleton_recall" not in plain.canonical_json()
    assert SegmentationRecipe(mode="binary", skeleton_recall=1.0).recipe_hash() != (
        plain.recipe_hash()
    )
    for bad in (0, -1.0, 11.0):
        with pytest.raises(ValueError, match="skeleton_recall"):
            SegmentationRecipe(mode="binary", skeleton_recall=bad)
