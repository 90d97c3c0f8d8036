from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelloop.domain import Ellipse
from labelloop.geometry import mask_shape
from labelloop.objects import counts_from_instances, counts_from_label_map
from labelloop.training.segmentation.evaluate import annotated_area_cap
from labelloop.training.segmentation.instances import (
    InstanceRules,
    choose_instance_rules,
    choose_split_areas,
    cut_oversized,
    instance_targets,
    instances_from_probs,
    interior_seeds,
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


def _necked_pair(n_labels: int = 2) -> np.ndarray:
    """One-hot instance probabilities of two touching 'cell' discs whose interiors join at
    a neck: the network left the contour between them open (as it often does)."""
    yy, xx = np.mgrid[:40, :60]
    disc = lambda cx, r: (yy - 20) ** 2 + (xx - cx) ** 2 <= r * r  # noqa: E731
    whole = disc(22, 9) | disc(36, 9)
    interior = disc(22, 7.5) | disc(36, 7.5)
    target = np.zeros((40, 60), np.int64)
    target[whole] = 1 + n_labels  # cell contour
    target[interior] = 1  # cell interior, one blob
    return _one_hot(target, 1 + 2 * n_labels)


def test_a_split_depth_cuts_interiors_joined_at_a_neck_into_two_cells():
    probs = _necked_pair()
    _, merged = instances_from_probs(probs, len(LABELS))
    assert merged.tolist() == [0, 1]  # one blob, one seed: the pair counts once
    inst, classes = instances_from_probs(probs, len(LABELS), split_depth=[1.0, 0.0])
    assert classes.tolist() == [0, 1, 1]
    # Each half gets its disc (the cut runs along the neck), contour included.
    assert {int(inst[20, 14]), int(inst[20, 44])} == {1, 2}
    assert abs(int((inst == 1).sum()) - int((inst == 2).sum())) <= 4
    # A round cell alone has one distance maximum and is never cut.
    yy, xx = np.mgrid[:40, :40]
    one = np.where((yy - 20) ** 2 + (xx - 20) ** 2 <= 81, 1, 0)
    seeds = interior_seeds(one.astype(bool), split_depth=1.0)
    assert seeds.max() == 1


def _discs(shape: tuple[int, int], *discs: tuple[float, float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([np.hypot(yy - y, xx - x) < r for y, x, r in discs], axis=0)


def test_a_blob_larger_than_the_split_area_is_cut_at_its_deepest_necks():
    pair = _discs((80, 120), (40, 35, 20), (40, 72, 20)).astype(np.int32)  # 2,464 px
    assert cut_oversized(pair, 0) is pair  # no bound: untouched
    assert cut_oversized(pair, 2500).max() == 1  # within the bound: one cell
    cut = cut_oversized(pair, 1500)
    assert sorted(np.bincount(cut.ravel())[1:].tolist()) == [1232, 1232]
    assert cut[40, 35] != cut[40, 72]
    # A chain of three is cut until every part is within the bound.
    chain = _discs((80, 120), (40, 20, 15), (40, 47, 15), (40, 74, 15)).astype(np.int32)
    assert len(np.unique(cut_oversized(chain, 1000))) - 1 == 3
    # A large round cell has no neck and stays whole, however small the bound.
    one = _discs((80, 120), (40, 60, 25)).astype(np.int32)
    assert cut_oversized(one, 100).max() == 1
    # Other seeds keep their ids; the input is not written to.
    both = np.where(one, 1, 0).astype(np.int32)
    both[_discs((80, 120), (10, 10, 5))] = 2
    assert (cut_oversized(both, 100) == both).all()


def test_a_split_area_parts_a_merged_pair_that_no_split_depth_was_chosen_for():
    probs = _necked_pair()
    area = int((probs.argmax(axis=0) == 1).sum())  # the merged interior blob
    _, whole = instances_from_probs(probs, len(LABELS), split_area=[area, 0])
    assert whole.tolist() == [0, 1]
    _, cut = instances_from_probs(probs, len(LABELS), split_area=[area - 1, 0])
    assert cut.tolist() == [0, 1, 1]
    # Read as components, the pair (contour included) is one component, cut the same way.
    top = probs.argmax(axis=0)
    area = int(((top == 1) | (top == 1 + len(LABELS))).sum())
    apart = [True, False]
    _, whole = instances_from_probs(probs, len(LABELS), components=apart, split_area=[area, 0])
    assert whole.tolist() == [0, 1]
    _, cut = instances_from_probs(probs, len(LABELS), components=apart, split_area=[area - 1, 0])
    assert cut.tolist() == [0, 1, 1]


def test_a_split_area_is_kept_unless_it_counts_the_basis_worse():
    probs = _necked_pair()
    rules = InstanceRules([4, 4], [0.0, 0.0], [False, False], [0, 0], [0.0, 0.0])
    area = int((probs.argmax(axis=0) == 1).sum())
    # The basis holds two cells there: the cut helps.
    assert choose_split_areas([probs], [[2, 0]], 2, rules, [area - 1, 50]) == [area - 1, 50]
    # It holds one (a large cell): the cut hurts and is dropped.
    assert choose_split_areas([probs], [[1, 0]], 2, rules, [area - 1, 50]) == [0, 50]
    # No blob above the bound: a tie, and the bound is kept for new images.
    assert choose_split_areas([probs], [[1, 0]], 2, rules, [area, 50]) == [area, 50]
    # Left out by `use`, the image cannot drop it; no bound at all stays none.
    use = np.array([[False, True]])
    assert choose_split_areas([probs], [[1, 0]], 2, rules, [area - 1, 0], use=use) == [
        area - 1,
        0,
    ]


def test_min_area_per_label_drops_specks_of_one_label_only():
    target = np.zeros((20, 30), np.int64)
    target[2:5, 2:5] = 1  # 9 px of "cell" interior
    target[10:13, 10:13] = 2  # 9 px of "platelet" interior
    probs = _one_hot(target, 5)
    _, both = instances_from_probs(probs, len(LABELS), min_area=4)
    assert both.tolist() == [0, 1, 2]
    _, only = instances_from_probs(probs, len(LABELS), min_area=[16, 4])
    assert only.tolist() == [0, 2]
    with pytest.raises(ValueError, match="one value per label"):
        instances_from_probs(probs, len(LABELS), min_area=[4, 4, 4])


def test_a_cell_the_image_edge_cuts_is_held_to_a_share_of_the_min_area():
    # Two 12 px "cell" interiors: one in the open (a speck), one on the left edge (what
    # the edge leaves of a cell). Under a 20 px minimum only the edge one stays.
    target = np.zeros((20, 30), np.int64)
    target[8:11, 0:4] = 1
    target[8:11, 14:18] = 1
    probs = _one_hot(target, 5)
    for apart in (False, True):  # the watershed and components alike
        read = {"min_area": [20, 4], "components": [apart, False]}
        inst, classes = instances_from_probs(probs, len(LABELS), **read)
        assert classes.tolist() == [0, 1] and inst[9, 0] > 0 and inst[9, 15] == 0
        # Held to the whole minimum area, both go; a share below 12 / 20 is needed.
        _, whole = instances_from_probs(probs, len(LABELS), **read, edge_share=1.0)
        assert whole.tolist() == [0]
        _, kept = instances_from_probs(probs, len(LABELS), **read, edge_share=0.6)
        assert kept.tolist() == [0, 1]
        _, gone = instances_from_probs(probs, len(LABELS), **read, edge_share=0.61)
        assert gone.tolist() == [0]
    # The rules are chosen under the same reading: with the edge cell annotated (and the
    # speck not), half the minimum area lets the larger candidate keep it; held to the
    # whole area, only the smaller one does.
    edge_only = np.where(np.arange(30) < 10, target, 0)
    probs = _one_hot(edge_only, 5)
    for share, area in ((0.5, 16), (1.0, 4)):
        rules = choose_instance_rules([probs], [[1, 0]], 2, min_areas=(4, 16), edge_share=share)
        assert rules.min_area[0] == area


def test_a_fragment_below_half_the_min_area_is_flooded_by_its_cell():
    # A cell (contour ring, interior) with a stray interior fragment inside its contour
    # area: two seeds without a minimum, one cell with it.
    target = np.zeros((30, 30), np.int64)
    target[4:26, 4:26] = 3  # cell contour probability everywhere in the cell
    target[8:20, 8:20] = 1  # the cell's interior, 144 px
    target[22:24, 22:24] = 1  # a 4 px fragment, cut off by contour
    probs = _one_hot(target, 5)
    _, classes = instances_from_probs(probs, len(LABELS), min_area=4)
    assert classes.tolist() == [0, 1, 1]
    inst, classes = instances_from_probs(probs, len(LABELS), min_area=[20, 4])
    assert classes.tolist() == [0, 1] and (inst > 0).sum() == 22 * 22


def test_an_instance_takes_the_label_most_of_its_pixels_have():
    # A 2 x 2 "platelet" interior seeds a blob that is otherwise "cell" contour: the seed's
    # label alone would call the whole 8 x 8 cell a platelet.
    target = np.zeros((12, 12), np.int64)
    target[2:10, 2:10] = 3  # cell contour
    target[5:7, 5:7] = 2  # platelet interior
    inst, classes = instances_from_probs(_one_hot(target, 5), len(LABELS))
    assert classes.tolist() == [0, 1] and (inst == 1).sum() == 64


def test_a_minimum_area_may_not_drop_the_annotated_cells_to_fix_the_count():
    """A split that breaks a cell in two and a minimum area that drops a small annotated
    cell cancel out in the count: by count alone that pair of rules wins. With the label's
    area cap (from the annotated areas) the minimum area cannot drop the small cell."""
    probs = _necked_pair()  # annotated as ONE (peanut-shaped) cell
    probs[:, 3:8, 48:53] = 0.0
    probs[3, 3:8, 48:53] = 1.0  # a small annotated cell: contour ring ...
    probs[3, 4:7, 49:52] = 0.0
    probs[1, 4:7, 49:52] = 1.0  # ... around its interior, 25 px in all
    probs[:, 30:33, 50:53] = 0.0
    probs[1, 30:33, 50:53] = 1.0  # a 9 px speck nobody annotated
    rules = {"split_depths": (0.0, 1.0), "min_areas": (4, 30)}
    area, depth, *_ = choose_instance_rules([probs], [[2, 0]], len(LABELS), **rules)
    assert (area[0], depth[0]) == (30, 1.0)  # "2 cells": two halves, the small cell dropped
    caps = [annotated_area_cap([25, 600]), annotated_area_cap([])]
    assert caps[0] < 30 and caps[1] == float("inf")
    area, depth, *_ = choose_instance_rules([probs], [[2, 0]], len(LABELS), area_caps=caps, **rules)
    assert (area[0], depth[0]) == (4, 0.0)  # the pair whole, the small cell kept
    assert area[1] == 30  # no platelet annotated: no cap
    # The grid's order does not matter, though the cap skips the cells' first candidate
    # and not the platelets'.
    rules["min_areas"] = (30, 4)
    area, depth, *_ = choose_instance_rules([probs], [[2, 0]], len(LABELS), area_caps=caps, **rules)
    assert (area, depth) == ([4, 30], [0.0, 0.0])


def test_rules_are_chosen_per_label_on_validation_counts():
    probs = [_necked_pair()] * 2
    speck = _necked_pair()
    speck[:, 2:4, 2:4] = 0.0
    speck[2, 2:4, 2:4] = 1.0  # a 4 px "platelet" nobody annotated
    probs.append(speck)
    min_area, depth, apart, *_ = choose_instance_rules(
        probs, [[2, 0]] * 3, len(LABELS), split_depths=(0.0, 1.0, 2.0), min_areas=(4, 8, 1000)
    )
    assert apart == [False, False]  # components would merge the pair; a tie goes to the watershed
    # Cells: the shallowest depth that splits the pair; the largest area that keeps them.
    assert depth[0] == 1.0 and min_area[0] == 8
    # Platelets: no split asked for; the speck goes at area 8 and nothing else is lost.
    assert depth[1] == 0.0 and min_area[1] == 1000
    # A label that may not be cut (its rules rest on training images) is read uncut, also
    # when no label may be cut and the cutting readings are not tried at all.
    grid = {"split_depths": (0.0, 1.0, 2.0), "min_areas": (4, 8, 1000)}
    for cuts in ([False, True], [False, False]):
        _, depth, *_ = choose_instance_rules(probs, [[2, 0]] * 3, len(LABELS), cuts=cuts, **grid)
        assert depth == [0.0, 0.0]


def _platelet_beside_a_cell() -> np.ndarray:
    """A cell (contour ring around its interior) and, touching its contour, a platelet the
    network saw only as platelet contour: no platelet interior, so no seed of its own."""
    target = np.zeros((24, 36), np.int64)
    target[4:20, 4:20] = 3  # cell contour
    target[7:17, 7:17] = 1  # cell interior
    target[9:14, 20:25] = 4  # platelet contour, touching the cell's contour
    return _one_hot(target, 5)


def test_a_label_read_as_components_keeps_a_small_cell_the_watershed_floods():
    probs = _platelet_beside_a_cell()
    _, flooded = instances_from_probs(probs, len(LABELS), min_area=4)
    assert flooded.tolist() == [0, 1]  # the cell's watershed took the platelet's pixels
    inst, classes = instances_from_probs(probs, len(LABELS), min_area=4, components=[False, True])
    assert classes.tolist() == [0, 1, 2]
    assert (inst == 1).sum() == 16 * 16 and (inst == 2).sum() == 25
    # Every label read as components: the same two objects, each its own label.
    _, both = instances_from_probs(probs, len(LABELS), min_area=4, components=True)
    assert both.tolist() == [0, 1, 2]
    # Below the label's minimum area a component is dropped like any instance.
    _, small = instances_from_probs(probs, len(LABELS), min_area=[4, 30], components=[0, 1])
    assert small.tolist() == [0, 1]


def test_components_are_chosen_for_a_label_whose_count_they_get_right():
    probs = [_platelet_beside_a_cell()] * 2
    rules = choose_instance_rules(probs, [[1, 1]] * 2, len(LABELS), min_areas=(4, 8))
    assert rules.components == [False, True]
    assert rules.min_area == [8, 8] and rules.split_depth == [0.0, 0.0]
    # Where the watershed counts right too, it is kept.
    rules = choose_instance_rules(probs, [[1, 0]] * 2, len(LABELS), min_areas=(4, 8))
    assert rules.components == [False, False]


def _bridged_pair() -> np.ndarray:
    """Two cells separated by a membrane (background) with a gap in it: their interiors
    join through a 2 px bridge. Beside them, a sliver of a cell 3 px wide."""
    target = np.zeros((24, 48), np.int64)
    target[4:20, 4:18] = 1  # cell A's interior
    target[4:20, 24:38] = 1  # cell B's interior
    target[11:13, 18:24] = 1  # the gap in the membrane between them
    target[4:20, 42:45] = 1  # a sliver of a third cell
    return _one_hot(target, 5)


def test_an_opening_cuts_a_bridge_through_a_membrane_gap_and_keeps_slivers():
    probs = _bridged_pair()
    _, merged = instances_from_probs(probs, len(LABELS), min_area=4)
    assert merged.tolist() == [0, 1, 1]  # the pair counts once
    inst, classes = instances_from_probs(probs, len(LABELS), min_area=4, opening=[2, 0])
    assert classes.tolist() == [0, 1, 1, 1]
    # Each cell gets its interior and half the bridge back; the sliver, too narrow for
    # the disk, has no seed and is an instance of its own.
    a, b = int(inst[10, 10]), int(inst[10, 30])
    assert a != b and (inst == a).sum() == (inst == b).sum() == 16 * 14 + 6
    assert (inst[4:20, 42:45] > 0).all() and len(np.unique(inst[4:20, 42:45])) == 1
    # A round cell wider than the disk is not cut.
    yy, xx = np.mgrid[:40, :40]
    one = (yy - 20) ** 2 + (xx - 20) ** 2 <= 81
    assert interior_seeds(one, opening=4).max() == 1


def test_an_opening_is_chosen_where_the_counts_ask_for_the_cut():
    probs = [_bridged_pair()] * 2
    rules = choose_instance_rules(probs, [[3, 0]] * 2, len(LABELS), split_depths=(0.0,))
    assert rules.opening[0] == 1 and rules.split_depth[0] == 0.0  # the smallest that cuts
    assert rules.opening[1] == 0  # no platelets: nothing to cut
    rules = choose_instance_rules(probs, [[2, 0]] * 2, len(LABELS), split_depths=(0.0,))
    assert rules.opening == [0, 0]


def _softly_bridged_pair() -> np.ndarray:
    """Two cells whose interiors join through a gap in their membrane where the network
    calls the pixels interior by a thin margin (0.55 against 0.45 contour), the way a
    trained network leaves an open membrane."""
    probs = _bridged_pair()[:, :, :40]
    probs[:, 11:13, 18:24] = 0.0
    probs[1, 11:13, 18:24] = 0.55
    probs[3, 11:13, 18:24] = 0.45
    return probs


def test_a_seed_threshold_parts_cells_joined_where_the_interior_is_unsure():
    probs = _softly_bridged_pair()
    _, merged = instances_from_probs(probs, len(LABELS), min_area=4)
    assert merged.tolist() == [0, 1]  # most likely interior: one seed, one cell
    inst, classes = instances_from_probs(probs, len(LABELS), min_area=4, seed_threshold=[0.7, 0])
    assert classes.tolist() == [0, 1, 1]
    # The bridge stays foreground: the watershed shares it between the two cells.
    a, b = int(inst[10, 10]), int(inst[10, 30])
    assert a != b and (inst == a).sum() + (inst == b).sum() == 2 * 16 * 14 + 12
    # A threshold the bridge reaches cuts nothing.
    _, same = instances_from_probs(probs, len(LABELS), min_area=4, seed_threshold=0.5)
    assert same.tolist() == [0, 1]


def test_a_seed_threshold_is_chosen_where_the_counts_ask_for_the_cut():
    probs = [_softly_bridged_pair()] * 2
    grid = {"split_depths": (0.0,), "openings": ()}
    rules = choose_instance_rules(probs, [[2, 0]] * 2, len(LABELS), **grid)
    assert rules.seed_threshold == [0.6, 0.0]  # the lowest that parts the pair
    rules = choose_instance_rules(probs, [[1, 0]] * 2, len(LABELS), **grid)
    assert rules.seed_threshold == [0.0, 0.0]  # one cell: no threshold
    # A label whose rules rest on training images is read without it.
    rules = choose_instance_rules(probs, [[2, 0]] * 2, len(LABELS), cuts=[False, True], **grid)
    assert rules.seed_threshold == [0.0, 0.0]
