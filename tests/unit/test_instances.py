from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelloop.domain import Ellipse
from labelloop.geometry import mask_shape
from labelloop.objects import counts_from_instances, counts_from_label_map
from labelloop.training.segmentation.instances import (
    instance_targets,
    instances_from_probs,
    match_instances,
    rasterize_instances,
    semantic_map,
)

LABELS = ["cell", "platelet"]


def _touching_discs() -> list[Ellipse]:
    # Centres 14 px apart with radius 8: the discs overlap by a sliver, i.e. they touch.
    return [
        Ellipse(label="cell", x=20, y=24, rx=8, ry=8),
        Ellipse(label="cell", x=34, y=24, rx=8, ry=8),
        Ellipse(label="platelet", x=50, y=50, rx=1.2, ry=1.2),
    ]


def _one_hot(target: np.ndarray, channels: int) -> np.ndarray:
    return np.eye(channels, dtype=np.float32)[target].transpose(2, 0, 1)


def test_targets_separate_the_interiors_of_touching_cells():
    inst, classes = rasterize_instances(_touching_discs(), LABELS, 64, 64)
    assert classes.tolist() == [0, 1, 1, 2]
    target = instance_targets(inst, classes, len(LABELS))
    # One blob of foreground, but two interiors of "cell" split by contour pixels.
    assert ndimage.label(target > 0)[1] == 2  # the touching pair + the platelet
    assert ndimage.label(target == 1, structure=np.ones((3, 3)))[1] == 2
    # Contour classes are per label: 1 + 2 = cell contour, 2 + 2 = platelet contour.
    assert set(np.unique(target).tolist()) <= {0, 1, 2, 3, 4}
    assert (target[inst == 3] == 4).all()


def test_watershed_splits_two_touching_discs_that_connected_components_merge():
    inst, classes = rasterize_instances(_touching_discs(), LABELS, 64, 64)
    probs = _one_hot(instance_targets(inst, classes, len(LABELS)), 1 + 2 * len(LABELS))
    pred, pred_classes = instances_from_probs(probs, len(LABELS), min_area=1)

    merged = counts_from_label_map(semantic_map(pred, pred_classes), LABELS, min_area=1)
    assert merged["cell"] == 1  # what connected components would count
    assert counts_from_instances(pred_classes, LABELS) == {"cell": 2, "platelet": 1}
    # Each predicted cell covers its true disc, contour pixels included.
    tp = match_instances(pred, pred_classes, inst, classes, len(LABELS), iou=0.9)
    assert tp.tolist() == [0, 2, 1]


def test_a_cell_that_is_all_contour_is_still_an_instance_of_its_label():
    probs = np.zeros((5, 10, 10), np.float32)
    probs[0] = 1.0
    probs[0, 4:6, 4:7] = 0.0
    probs[4, 4:6, 4:7] = 1.0  # platelet contour only, no interior
    inst, classes = instances_from_probs(probs, len(LABELS), min_area=4)
    assert inst.max() == 1 and classes.tolist() == [0, 2] and (inst > 0).sum() == 6
    with pytest.raises(ValueError, match="5, H, W"):
        instances_from_probs(probs[:3], len(LABELS))


def test_mask_shapes_become_one_instance_per_connected_part():
    m = np.zeros((20, 20), bool)
    m[2:6, 2:6] = True
    m[10:15, 10:15] = True
    inst, classes = rasterize_instances([mask_shape(m, "cell")], LABELS, 20, 20)
    assert inst.max() == 2 and classes.tolist() == [0, 1, 1]


def test_matching_counts_pairs_above_iou_of_the_same_label():
    truth = np.zeros((10, 20), np.int32)
    truth[0:4, 0:4] = 1
    truth[0:4, 10:14] = 2
    pred = np.zeros_like(truth)
    pred[0:4, 0:3] = 1  # IoU 0.75 with truth 1
    pred[0:4, 12:16] = 2  # IoU 8 / 24 with truth 2: no match
    pred[8:10, 0:2] = 3  # nothing there
    t_cls = np.array([0, 1, 1])
    assert match_instances(pred, np.array([0, 1, 1, 1]), truth, t_cls, 2).tolist() == [0, 1, 0]
    # The right overlap but the wrong label is no match.
    assert match_instances(pred, np.array([0, 2, 1, 1]), truth, t_cls, 2).tolist() == [0, 0, 0]
