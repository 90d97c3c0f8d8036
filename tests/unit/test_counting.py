from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelloop.domain import Box, Keypoint, Polygon, Tag
from labelloop.geometry import encode_instances, encode_mask, mask_shape, rasterize_classes
from labelloop.kinds import kind_entry
from labelloop.objects import (
    count_truth_of,
    counts_from_instances,
    counts_from_label_map,
    counts_from_masks,
    instance_shapes,
    label_map_to_shapes,
    masks_to_shapes,
    object_counts,
    probs_to_label_map,
)

LABELS = ["RBC", "WBC", "Platelets"]
REGION = kind_entry("segmentation").counted_kinds


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


def _square(label: str, x0: int, y0: int, side: int = 6) -> Polygon:
    return Polygon(
        label=label, points=[(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    )


def test_true_counts_are_annotated_objects_even_where_cells_touch():
    """Two touching squares are one blob in the rasterised truth but two annotated cells."""
    shapes = [_square("RBC", 2, 2), _square("RBC", 8, 2), _square("WBC", 30, 30)]
    raster = rasterize_classes(shapes, LABELS, 40, 40)
    assert counts_from_label_map(raster, LABELS)["RBC"] == 1  # the merge the metric must not copy
    assert object_counts(shapes, LABELS, REGION) == {"RBC": 2, "WBC": 1, "Platelets": 0}


def test_a_box_or_point_marking_an_outlined_cell_is_not_a_second_cell():
    cell = _square("RBC", 2, 2)
    box = Box(label="RBC", x=2, y=2, w=6, h=6)  # the demo's box beside each outline
    click = Keypoint(label="RBC", x=5, y=5)
    lone_box = Box(label="RBC", x=20, y=20, w=6, h=6)  # a cell only boxed
    other = Box(label="WBC", x=2, y=2, w=6, h=6)  # another label: its own object
    counts = object_counts([cell, box, click, lone_box, other], LABELS, REGION)
    assert counts == {"RBC": 2, "WBC": 1, "Platelets": 0}
    tag = Tag(label="RBC")
    assert object_counts([tag, lone_box], LABELS, REGION)["RBC"] == 1  # tags are no objects


def test_a_mask_is_one_object_per_separate_part_and_touching_masks_stay_apart():
    left = np.zeros((20, 20), bool)
    left[2:8, 2:8] = True
    right = np.zeros((20, 20), bool)
    right[2:8, 8:14] = True  # touches `left`: still a second annotated cell
    both = left | np.pad(np.ones((3, 3), bool), ((15, 2), (15, 2)))  # two parts, one brush
    shapes = [mask_shape(left, "RBC"), mask_shape(right, "RBC"), mask_shape(both, "WBC")]
    assert object_counts(shapes, LABELS, REGION) == {"RBC": 2, "WBC": 2, "Platelets": 0}


def test_every_region_a_segmentation_model_learns_is_counted():
    from labelloop.training.segmentation.instances import REGION_KINDS

    assert set(kind_entry("segmentation").counted_kinds) >= REGION_KINDS


def test_stored_metrics_say_how_their_counts_were_measured():
    assert count_truth_of({}, "segmentation") == "raster_components"
    assert count_truth_of({"count_truth": "annotated_objects"}, "segmentation") == (
        "annotated_objects"
    )
    assert count_truth_of(None, "detection") == "annotated_objects"  # always true boxes


def test_old_count_metrics_are_flagged_and_new_ones_give_relative_errors():
    from labelloop.reports import count_relative_errors, count_warning

    test = {"per_class": {"RBC": {"true_count": 200, "pred_count": 190}, "WBC": {}}}
    assert count_relative_errors(test) == {"RBC": 0.05, "WBC": None}
    assert count_warning({"name": "m1", "count_truth": "annotated_objects"}) is None
    assert "rasterised truth" in count_warning({"name": "m1", "count_truth": "raster_components"})


def test_detection_metrics_give_relative_errors_too():
    from labelloop.reports import count_relative_errors

    test = {"per_class": {"RBC": {"n_true": 100, "n_pred": 90}, "WBC": {"n_true": 0}}}
    assert count_relative_errors(test) == {"RBC": 0.1, "WBC": None}


def test_the_constant_count_baseline_and_the_classes_it_is_not_beaten_on():
    from labelloop.objects import add_count_baseline, evaluation_not_beaten
    from labelloop.reports import model_warnings

    labels = ["RBC", "WBC", "Platelets"]
    train = [[10, 1, 0], [14, 1, 2], [12, 0, 1]]  # medians 12, 1, 1
    truth = [[12, 1, 0], [3, 1, 4]]  # the second field's RBCs mostly unannotated
    result = {
        "per_class": {
            "RBC": {"count_mae": 5.0, "true_count": 15},
            "WBC": {"count_mae": 0.5, "true_count": 2},
            "Platelets": {"count_mae": 0.5, "true_count": 4},
        }
    }
    add_count_baseline(result, labels, train, truth)
    assert result["count_constant"] == {"RBC": 12.0, "WBC": 1.0, "Platelets": 1.0}
    per = result["per_class"]
    # RBC |12-12|, |3-12| -> 4.5; WBC exact -> 0; platelets |0-1|, |4-1| -> 2.
    assert [per[lb]["count_mae_constant"] for lb in labels] == [4.5, 0.0, 2.0]
    # RBC (5.0 >= 4.5) and WBC (0.5 >= 0, the constant is exact) are not beaten.
    assert evaluation_not_beaten(result) == {"RBC": (5.0, 4.5, 12.0), "WBC": (0.5, 0.0, 1.0)}
    row = {"name": "m2", "count_truth": "annotated_objects", "metrics": result}
    (warning,) = model_warnings(row)
    assert warning.startswith("m2's counts of RBC, WBC are no closer to the annotations than")
    assert "RBC: MAE 5.00 against 4.50 for 12 per image" in warning
    # A class without annotated objects in the test split is not judged.
    per["WBC"]["true_count"] = 0
    assert set(evaluation_not_beaten(result)) == {"RBC"}
    # Nothing without training images; old metrics get the old-definition warning only.
    assert add_count_baseline({"per_class": {}}, labels, [], truth) == {"per_class": {}}
    old = {**row, "count_truth": "raster_components"}
    assert ["rasterised truth" in w for w in model_warnings(old)] == [True]


def test_a_count_report_sets_each_mae_beside_the_constants():
    from labelloop.counting.report import CountReport, ImageCount

    report = CountReport("m1", ["RBC"], Path("."), constant={"RBC": 10.0})
    report.images = [
        ImageCount("a.png", {"RBC": 11}, {"RBC": 12}),
        ImageCount("b.png", {"RBC": 7}, {"RBC": 6}),
        ImageCount("c.png", {"RBC": 9}),  # not annotated: not compared
    ]
    acc = report.accuracy()["RBC"]
    assert (acc["mae"], acc["mae_constant"]) == (1.0, 3.0)
    assert report.not_beaten() == {}
    report.constant = {"RBC": 9.0}  # |12-9|, |6-9|: 3 -> still beaten by the model
    assert report.not_beaten() == {}
    report.images[0] = ImageCount("a.png", {"RBC": 2}, {"RBC": 12})
    assert report.not_beaten() == {"RBC": (5.5, 3.0, 9.0)}
    assert (
        "mae_constant" not in CountReport("m1", ["RBC"], Path("."), report.images).accuracy()["RBC"]
    )


def test_a_count_report_measures_on_images_the_model_has_not_seen():
    from labelloop.counting.report import CountReport, ImageCount

    report = CountReport("m1", ["RBC"], Path("."), constant={"RBC": 10.0})
    report.images = [
        ImageCount("train.png", {"RBC": 12}, {"RBC": 12}, split="train"),
        ImageCount("val.png", {"RBC": 6}, {"RBC": 6}, split="val"),
        ImageCount("test.png", {"RBC": 9}, {"RBC": 12}, split="test"),
        ImageCount("since.png", {"RBC": 5}, {"RBC": 6}),  # annotated after the freeze
        ImageCount("new.png", {"RBC": 9}),  # not annotated
    ]
    acc = report.accuracy()["RBC"]
    # |9-12|, |5-6| on the held-out images; the exact training and validation counts are
    # left out.
    assert (acc["mae"], acc["images"], acc["true"]) == (2.0, 2, 18)
    assert report.comparison() == {"images": 2, "held_out": True, "left_out_seen": 2}
    # Only seen images: they are compared, marked as not held out.
    report.images = report.images[:2]
    assert report.accuracy()["RBC"]["mae"] == 0.0
    assert report.comparison() == {"images": 2, "held_out": False, "left_out_seen": 0}
    report.images = [ImageCount("new.png", {"RBC": 9})]
    assert report.accuracy() is None
    assert report.comparison() == {"images": 0, "held_out": None, "left_out_seen": 0}


def test_intervals_that_held_far_less_often_than_claimed_on_the_test_split_are_named():
    from labelloop.objects import intervals_not_held
    from labelloop.reports import model_warnings

    per = {
        "RBC": {"count_mae": 1.0, "interval_coverage": 0.26},
        "WBC": {"count_mae": 0.1, "interval_coverage": 0.96},
        "Platelets": {"count_mae": 0.3, "interval_coverage": 0.79},
    }
    test = {"per_class": per, "interval_images": 72}
    assert intervals_not_held(test) == {"RBC": 0.26, "Platelets": 0.79}
    row = {"name": "m3", "metrics": test, "interval_margin": None}
    (warning,) = model_warnings(row)
    assert warning.startswith("m3's count intervals held the annotated count of only RBC 26%")
    assert "Platelets 79% of its 72 test images, where they claim 95%" in warning
    assert "not calibrated" in warning
    calibrated = model_warnings({**row, "interval_margin": {"RBC": 13.9}})
    assert ["did not carry over" in w for w in calibrated] == [True]
    # 19 test images are too few to judge; versions evaluated before coverage was stored
    # (no `interval_images`) are not judged either.
    assert intervals_not_held({**test, "interval_images": 19}) == {}
    assert intervals_not_held({"per_class": per}) == {}
    assert model_warnings({**row, "metrics": {"per_class": per}}) == []


def test_interval_margins_cover_the_truth_of_19_in_20_images():
    from labelloop.objects import interval_margins

    def row(expected: float, half: float, truth: int):
        iv = {"expected": expected, "low": expected - half, "high": expected + half}
        return {"RBC": iv}, {"RBC": truth}

    # 19 images: 15 inside their interval, and 4 whose truth lies 1, 2, 3 and 5 cells
    # beyond it (missed cells the confidences cannot see).
    rows = [row(10.0, 1.0, 10) for _ in range(15)]
    rows += [row(10.0, 1.0, 10 + 1 + extra) for extra in (1, 2, 3)] + [row(10.0, 1.0, 4)]
    # ceil(20 * 0.95) = 19: the largest excess, 5, is what holds 95 % of new images.
    assert interval_margins(rows, ["RBC"]) == {"RBC": 5.0}
    # At 80 %: the ceil(20 * 0.8) = 16th smallest excess, 1.
    assert interval_margins(rows, ["RBC"], coverage=0.8) == {"RBC": 1.0}
    # 18 images cannot support a 95 % claim: nothing is chosen.
    assert interval_margins(rows[:18], ["RBC"]) == {}


def test_the_conformal_rank_and_the_kinds_that_calibrate_their_intervals():
    from labelloop.objects import conformal_rank
    from labelloop.training.kind import get_kind

    assert [conformal_rank(n) for n in (0, 18, 19, 99)] == [None, None, 19, 95]
    assert conformal_rank(9, coverage=0.8) == 8
    assert get_kind("segmentation").count_intervals and get_kind("detection").count_intervals
    # A classifier labels whole images; one trained on crops cannot predict an image at
    # all, so a training run must not ask it to.
    assert not get_kind("classification").count_intervals


def test_a_margin_widens_both_sides_of_a_count_interval():
    from labelloop.objects import count_intervals

    half = Box(label="RBC", x=9, y=0, w=4, h=4, attributes={"score": 0.5})
    plain = count_intervals([half, half], ["RBC", "WBC"])
    wide = count_intervals([half, half], ["RBC", "WBC"], margin={"RBC": 2.0})
    assert wide["RBC"]["high"] == pytest.approx(plain["RBC"]["high"] + 2.0)
    assert wide["RBC"]["low"] == 0.0  # clipped at zero, never negative
    assert wide["RBC"]["expected"] == plain["RBC"]["expected"] == 1.0
    assert wide["WBC"] == plain["WBC"]  # no margin for WBC


def test_a_version_whose_rules_rest_on_few_objects_is_flagged_for_those_classes_only():
    from labelloop.reports import rule_basis_warning

    row = {"name": "m1", "rule_objects": {"RBC": 52, "WBC": 3, "Platelets": 9}}
    warning = rule_basis_warning(row)
    assert "m1's instance rules" in warning and "WBC 3, Platelets 9" in warning
    assert "RBC" not in warning
    assert rule_basis_warning({**row, "rule_objects": {"RBC": 10}}) is None
    assert rule_basis_warning({"name": "m0", "rule_objects": None}) is None  # not recorded


def test_count_intervals_read_object_scores_as_probabilities():
    from labelloop.objects import count_intervals

    sure = Box(label="RBC", x=0, y=0, w=4, h=4)  # no score: certain
    half = Box(label="RBC", x=9, y=0, w=4, h=4, attributes={"score": 0.5})
    iv = count_intervals([sure, half, half], LABELS)
    assert iv["RBC"]["expected"] == 2.0
    assert iv["RBC"]["high"] - 2.0 == pytest.approx(1.96 * np.sqrt(0.5), abs=1e-3)
    assert iv["RBC"]["low"] == pytest.approx(2.0 - 1.96 * np.sqrt(0.5), abs=1e-3)
    assert iv["WBC"] == {"expected": 0.0, "low": 0.0, "high": 0.0, "sd": 0.0}
    assert iv["RBC"]["sd"] == pytest.approx(np.sqrt(0.5), abs=1e-3)


def test_a_total_interval_adds_variances_and_margins_not_sds():
    from labelloop.objects import count_intervals, total_interval

    half = Box(label="RBC", x=9, y=0, w=4, h=4, attributes={"score": 0.5})
    # 100 images, each 8 objects at p = 0.5: sd sqrt(2) per image, 10 * sqrt(2) in all.
    per_image = [count_intervals([half] * 8, ["RBC"], margin={"RBC": 1.0})["RBC"]] * 100
    total = total_interval(per_image, margin=1.0)
    assert total["expected"] == 400.0
    half_width = 1.96 * 10 * np.sqrt(2) + 100 * 1.0
    assert total["high"] == pytest.approx(400.0 + half_width, abs=0.05)
    assert total["low"] == pytest.approx(400.0 - half_width, abs=0.05)
    # The ends summed would claim 1.96 * 100 * sqrt(2) + 100 on each side: ten times the
    # sd part. Intervals stored before the sd was kept are still summed end to end.
    summed = sum(iv["high"] for iv in per_image)
    assert total["high"] < summed
    old = [{k: v for k, v in iv.items() if k != "sd"} for iv in per_image]
    assert total_interval(old, margin=1.0)["high"] == pytest.approx(summed)
    assert total_interval([]) is None


def test_interval_wording_claims_95_percent_only_when_calibrated():
    from labelloop.objects import interval_basis

    calibrated = interval_basis({"RBC": 3.0, "WBC": 0.5})
    assert "margins chosen on validation (RBC 3, WBC 0.5 cells per image)" in calibrated
    assert "to hold the annotated count of 95% of images" in calibrated
    for plain in (interval_basis(None), interval_basis({})):
        assert "not calibrated on validation" in plain
        assert "less often than 95%" in plain and "margins" not in plain


def test_region_shapes_carry_their_mean_probability_as_score():
    lm = _drawn()
    probs = np.zeros((3, *lm.shape), np.float32)
    probs[0][lm == 1] = 0.8
    probs[1][lm == 2] = 0.6
    shapes = label_map_to_shapes(lm, LABELS, label_probs=probs)
    assert {s.label: s.attributes["score"] for s in shapes} == {
        "RBC": pytest.approx(0.8),
        "WBC": pytest.approx(0.6),
        "Platelets": 0.0,
    }


def test_overlay_numbers_every_counted_object_and_hides_none_under_the_legend():
    from labelloop.counting.overlay import draw_overlay, legend_height

    def overlay(shapes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(draw_overlay(image, shapes, counts, LABELS))))

    image = np.full((120, 160, 3), 255, np.uint8)
    lm = np.zeros((120, 160), np.uint8)
    lm[60:120, 80:160] = _drawn()
    lm[2:12, 2:12] = 1  # an RBC in the top-left corner, where the legend used to cover it
    shapes = label_map_to_shapes(lm, LABELS)
    counts = counts_from_label_map(lm, LABELS)
    top = legend_height(LABELS)
    drawn, first_only = overlay(shapes), overlay(shapes[:1])
    assert drawn.shape == (120 + top, 160, 3) and (drawn[:top] != 255).any()  # the legend
    # The corner RBC's outline shows below the legend strip.
    assert (drawn[top + 2 : top + 12, 2:12] != 255).any()
    # The 10x10 RBC at (90:100, 110:120): its outline and, inside it, its index.
    cell = (slice(top + 92, top + 98), slice(112, 118))
    assert (drawn[cell] != 255).any() and (first_only[cell] == 255).all()


def test_cells_enclosed_by_membranes_are_counted_and_specks_dropped_by_min_area():
    from labelloop.objects import choose_min_area, enclosed_regions

    membrane = np.zeros((30, 30), bool)
    membrane[:, 10] = membrane[:, 20] = True  # three columns of cells
    membrane[15, :10] = True  # the left column split in two
    membrane[24:27, 24:27] = True
    membrane[25, 25] = False  # a 1-pixel hole inside a membrane blob: not a cell
    cells = enclosed_regions(membrane, min_area=4)
    assert len(np.unique(cells)) - 1 == 4
    assert len(np.unique(enclosed_regions(membrane, min_area=1))) - 1 == 5
    gap = membrane.copy()
    gap[15, 4] = False  # a gap in the membrane merges the two cells it separated
    assert len(np.unique(enclosed_regions(gap))) - 1 == 3
    assert choose_min_area([membrane, membrane], [4, 4], grid=(1, 4, 200)) == 4
    # Two annotated cells: dropping the two small ones matches the count, unless the
    # annotated areas forbid a minimum area that large.
    assert choose_min_area([membrane], [2], grid=(1, 4, 200)) == 200
    assert choose_min_area([membrane], [2], grid=(1, 4, 200), area_cap=100) == 4
    assert choose_min_area([membrane], [2], grid=(4, 200), area_cap=1) == 4


def test_encode_instances_matches_one_mask_at_a_time_at_the_edges_and_gaps():
    """The strip-limited encoding gives each instance's own RLE: an id with no pixels, an
    instance whose box holds another one, instances in the first / last column and row."""
    rng = np.random.default_rng(3)
    inst = rng.integers(0, 9, (37, 23)).astype(np.int32)
    inst[inst == 5] = 0  # id 5 has no pixels
    inst[10:20, 5:15] = 7
    inst[13:16, 8:11] = 8  # inside 7's box
    inst[:, 0], inst[:, -1], inst[0, :], inst[-1, 3] = 2, 3, 4, 6
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # 9: beyond the largest id present
    got = encode_instances(inst, ids)
    assert got == [encode_mask(inst == j) for j in ids]
    assert encode_instances(inst, []) == []
