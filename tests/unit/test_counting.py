from __future__ import annotations

import numpy as np

from labelloop.geometry import rasterize_classes
from labelloop.objects import (
    counts_from_instances,
    counts_from_label_map,
    counts_from_masks,
    instance_shapes,
    label_map_to_shapes,
    masks_to_shapes,
    probs_to_label_map,
)

LABELS = ["RBC", "WBC", "Platelets"]


def _drawn() -> np.ndarray:
    lm = np.zeros((60, 80), np.uint8)
    lm[2:8, 2:8] = 1
    lm[2:8, 20:28] = 1
    lm[30:40, 30:40] = 1
    lm[45:58, 60:75] = 2
    lm[50:52, 5:7] = 3  # 4 pixels: counted at min_area=4
    lm[55, 20] = 3  # a 1-pixel speck: noise
    return lm


def test_counts_on_a_drawn_label_map_are_exact():
    assert counts_from_label_map(_drawn(), LABELS) == {"RBC": 3, "WBC": 1, "Platelets": 1}
    assert counts_from_label_map(_drawn(), LABELS, min_area=1)["Platelets"] == 2
    assert counts_from_label_map(np.zeros((5, 5), np.uint8), LABELS) == dict.fromkeys(LABELS, 0)


def test_probs_to_label_map_takes_argmax():
    probs = np.zeros((4, 2, 3), np.float32)
    probs[0] = 0.4
    probs[3, 1, 2] = 0.6
    lm = probs_to_label_map(probs)
    assert lm.dtype == np.uint8 and lm.tolist() == [[0, 0, 0], [0, 0, 3]]


def test_shapes_round_trip_through_rasterising():
    lm = _drawn()
    per_instance = label_map_to_shapes(lm, LABELS)
    assert [s.label for s in per_instance].count("RBC") == 3
    assert len(per_instance) == 5  # speck dropped
    per_class = label_map_to_shapes(lm, LABELS, per_instance=False)
    assert sorted(s.label for s in per_class) == sorted(LABELS)
    expected = lm.copy()
    expected[55, 20] = 0
    for shapes in (per_instance, per_class):
        assert (
            rasterize_classes(shapes, LABELS, 60, 80, kinds=frozenset({"mask"})) == expected
        ).all()


def test_overlapping_label_masks_count_and_outline_each_label():
    masks = np.zeros((3, 60, 80), bool)
    masks[0] = _drawn() == 1  # 3 RBC blobs
    masks[1, 2:8, 2:8] = True  # a WBC on top of the first RBC
    assert counts_from_masks(masks, LABELS) == {"RBC": 3, "WBC": 1, "Platelets": 0}
    shapes = masks_to_shapes(masks, LABELS)
    assert sorted(s.label for s in shapes) == ["RBC", "RBC", "RBC", "WBC"]
    wbc = next(s for s in shapes if s.label == "WBC")
    assert (rasterize_classes([wbc], LABELS, 60, 80, kinds=frozenset({"mask"})) == 2).sum() == 36


def test_instances_count_touching_cells_separately_and_outline_each():
    inst = np.zeros((10, 20), np.int32)
    inst[2:8, 2:8] = 1
    inst[2:8, 8:14] = 2  # touching cell 1
    inst[0:2, 16:18] = 3
    classes = np.array([0, 1, 1, 3])
    assert counts_from_instances(classes, LABELS) == {"RBC": 2, "WBC": 0, "Platelets": 1}
    assert counts_from_label_map(classes[inst].astype(np.uint8), LABELS)["RBC"] == 1
    shapes = instance_shapes(inst, classes, LABELS)
    assert [s.label for s in shapes] == ["RBC", "RBC", "Platelets"]
    back = rasterize_classes(shapes[1:2], LABELS, 10, 20, kinds=frozenset({"mask"}))
    assert ((back == 1) == (inst == 2)).all()
