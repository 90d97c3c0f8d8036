from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from labelloop.domain import Ellipse, shapes_to_json
from labelloop.imaging import encode_png
from labelloop.objects import EDGE_AREA_SHARE
from labelloop.training.common import MEAN, STD, to_input
from labelloop.training.segmentation.evaluate import (
    binary_metrics,
    evaluate_segmentation,
    instance_metrics,
    segmentation_metrics,
)
from labelloop.training.segmentation.recipe import SegmentationRecipe
from tests.unit.segmentation_fixtures import (
    BACKGROUND,
    COLOURS,
    LABELS,
    SIZE,
    draw,
    make_manifest,
)

NAMES = ["A", "B", "C"]


def test_perfect_predictions_give_dice_one():
    truth = np.zeros((20, 20), np.uint8)
    truth[2:6, 2:6] = 1
    truth[10:18, 10:18] = 2
    one = {"A": 1, "B": 1, "C": 0}
    m = segmentation_metrics([truth, truth], [truth, truth], NAMES, true_counts=[one, one])
    assert m["per_class"]["A"]["dice"] == 1.0 and m["per_class"]["B"]["iou"] == 1.0
    assert m["per_class"]["C"]["dice"] is None  # absent everywhere: no score, not 0 or 1
    assert m["mean_dice"] == 1.0 and m["mean_iou"] == 1.0 and m["pixel_accuracy"] == 1.0
    assert m["mean_count_mae"] == 0.0 and m["n_images"] == 2


def test_metrics_are_micro_over_pixels_and_count_error_per_image():
    truth = np.zeros((10, 10), np.uint8)
    truth[0:2, 0:5] = 1  # 10 px
    pred = np.zeros_like(truth)
    pred[0:2, 0:4] = 1  # 8 px, all inside truth
    pred[8:10, 8:10] = 1  # 4 px false positive, a second blob
    empty = np.zeros_like(truth)
    none = dict.fromkeys(NAMES, 0)
    m = segmentation_metrics(
        [pred, empty], [truth, empty], NAMES, true_counts=[{**none, "A": 1}, none]
    )
    a = m["per_class"]["A"]
    assert (a["tp"], a["fp"], a["fn"]) == (8, 4, 2)
    assert a["dice"] == pytest.approx(16 / 22) and a["iou"] == pytest.approx(8 / 14)
    assert a["count_mae"] == pytest.approx(0.5)  # 2 vs 1 blobs in image 1, 0 vs 0 in image 2
    assert m["pixel_accuracy"] == pytest.approx(194 / 200)
    assert m["mean_dice"] == pytest.approx(16 / 22)
    # 6 of 200 pixels decided wrongly for A; B and C never appear, so no error for them.
    assert a["pixel_error"] == pytest.approx(6 / 200)
    assert m["per_class"]["B"]["pixel_error"] == 0.0


def test_pixel_error_of_a_hand_made_membrane_mask():
    truth = np.zeros((1, 4, 5), bool)
    truth[0, :, 2] = True  # a vertical membrane, 4 px
    pred = np.zeros_like(truth)
    pred[0, :3, 2] = True  # 3 found, 1 missed
    pred[0, 0, 3] = True  # 1 false membrane
    m = binary_metrics([pred], [truth], ["membrane"], true_counts=[{"membrane": 1}])
    mem = m["per_class"]["membrane"]
    assert (mem["tp"], mem["fp"], mem["fn"]) == (3, 1, 1)
    assert mem["pixel_error"] == pytest.approx(2 / 20) and m["pixel_error"] == pytest.approx(0.1)
    assert m["pixel_accuracy"] == pytest.approx(0.9)
    assert mem["dice"] == pytest.approx(6 / 8) and mem["iou"] == pytest.approx(3 / 5)


def test_binary_metrics_score_overlapping_labels_independently():
    truth = np.zeros((2, 6, 6), bool)
    truth[0, :3] = True
    truth[1, 1:4] = True  # overlaps label 0 on row 1-2
    pred = truth.copy()
    pred[1, 5, 2:6] = True  # 4 false pixels for label 1 only, a second blob
    m = binary_metrics([pred], [truth], ["A", "B"], true_counts=[{"A": 1, "B": 1}])
    assert m["per_class"]["A"]["dice"] == 1.0 and m["per_class"]["A"]["pixel_error"] == 0.0
    assert m["per_class"]["B"]["fp"] == 4 and m["per_class"]["B"]["pixel_error"] == 4 / 36
    assert m["per_class"]["B"]["count_mae"] == 1.0  # 2 blobs predicted, 1 true


def test_instance_metrics_count_instances_and_match_at_iou_half():
    truth = np.zeros((8, 12), np.int32)
    truth[1:5, 1:5] = 1
    truth[1:5, 5:9] = 2  # touching the first: one blob, two cells
    pred = np.zeros_like(truth)
    pred[1:5, 1:9] = 1  # merged: IoU 0.5 with each, not above
    two = [{"cell": 2}]
    m = instance_metrics(
        [(pred, np.array([0, 1]))], [(truth, np.array([0, 1, 1]))], ["cell"], true_counts=two
    )
    cell = m["per_class"]["cell"]
    assert cell["dice"] == 1.0  # the pixels are right...
    assert (cell["true_count"], cell["pred_count"], cell["count_mae"]) == (2, 1, 1.0)
    assert cell["matched_50"] == 0 and m["mean_f1_50"] == 0.0  # ...the instances are not
    split = np.where(truth > 0, truth, 0)
    m = instance_metrics(
        [(split, np.array([0, 1, 1]))], [(truth, np.array([0, 1, 1]))], ["cell"], true_counts=two
    )
    assert m["mean_f1_50"] == 1.0 and m["mean_count_mae"] == 0.0


def test_network_input_is_each_channel_normalised_in_float32():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    x = to_input(image)
    assert x.dtype == np.float32 and x.shape == (3, 7, 5) and x.flags.c_contiguous
    expected = ((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
    assert np.array_equal(x, expected)  # bit-equal, not merely close


class _ColourOracle(nn.Module):
    """Classifies each pixel by its colour: a perfect model for the synthetic discs."""

    def __init__(self):
        super().__init__()
        colours = [BACKGROUND] + [COLOURS[n] for n in LABELS]
        ref = (np.array(colours, np.float32) - MEAN) / STD
        self.ref = nn.Parameter(torch.from_numpy(ref), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = ((x[:, None] - self.ref[None, :, :, None, None]) ** 2).sum(2)
        return -100.0 * dist


def test_evaluate_with_a_perfect_model_scores_one():
    manifest, blobs = make_manifest({"test": 3})
    m = evaluate_segmentation(_ColourOracle(), manifest, blobs.__getitem__, split="test")
    assert m["split"] == "test" and m["n_images"] == 3
    assert m["mean_dice"] == 1.0 and m["pixel_accuracy"] == 1.0 and m["mean_count_mae"] == 0.0
    assert sum(c["true_count"] for c in m["per_class"].values()) == sum(
        len(it["shapes"]) for it in manifest["items"]
    )


def test_evaluation_stores_the_constant_count_a_model_must_beat():
    manifest, blobs = make_manifest({"train": 5, "test": 3}, seed=3)

    def annotated(split: str) -> np.ndarray:  # shapes per label, as drawn
        return np.array(
            [
                [sum(sh["label"] == lb for sh in it["shapes"]) for lb in LABELS]
                for it in manifest["items"]
                if it["split"] == split
            ]
        )

    constant = np.median(annotated("train"), axis=0)
    m = evaluate_segmentation(_ColourOracle(), manifest, blobs.__getitem__, split="test")
    assert m["count_constant"] == dict(zip(LABELS, constant.tolist(), strict=True))
    errors = np.abs(annotated("test") - constant).mean(axis=0)
    for lb, err in zip(LABELS, errors, strict=True):
        assert m["per_class"][lb]["count_mae_constant"] == round(float(err), 4)
    # Without training images there is no constant, and nothing is claimed.
    no_train, blobs = make_manifest({"test": 2})
    m = evaluate_segmentation(_ColourOracle(), no_train, blobs.__getitem__, split="test")
    assert "count_constant" not in m
    assert all("count_mae_constant" not in c for c in m["per_class"].values())


def test_count_intervals_are_widened_on_validation_by_what_the_model_cannot_see():
    from labelloop.training.intervals import calibrate_count_intervals
    from labelloop.training.segmentation.kind import KIND

    manifest, blobs = make_manifest({"train": 1, "val": 19}, seed=5)
    val = [it for it in manifest["items"] if it["split"] == "val"]
    # Three validation images hold an annotated red cell that is not in the image (an
    # annotation the model cannot see): their truth lies one cell above any interval.
    for it in val[:3]:
        it["shapes"] = it["shapes"] + shapes_to_json([Ellipse(label="Red", x=1, y=1, rx=1, ry=1)])
    recipe = SegmentationRecipe()
    tuned = calibrate_count_intervals(
        KIND, _ColourOracle(), manifest, blobs.__getitem__, labels=LABELS, recipe=recipe
    )
    # The oracle finds every drawn disc with certainty: no interval width of its own, and
    # the 19th smallest of 19 excesses (16 zeros, three ones) is one red cell.
    assert tuned.count_interval_margin == {"Red": 1.0, "Blue": 0.0}
    # With 18 validation images a 95 % interval cannot be calibrated: the recipe stays.
    manifest["items"] = [it for it in manifest["items"] if it is not val[-1]]
    same = calibrate_count_intervals(
        KIND, _ColourOracle(), manifest, blobs.__getitem__, labels=LABELS, recipe=recipe
    )
    assert same is recipe and same.count_interval_margin is None


class _ColourSigmoid(nn.Module):
    """The colour oracle in binary mode: one logit per label, high where its colour is."""

    def __init__(self):
        super().__init__()
        self.oracle = _ColourOracle()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.oracle(x)
        return logits[:, 1:] - logits[:, :1]


def test_evaluate_in_binary_mode_with_a_perfect_model_scores_one():
    manifest, blobs = make_manifest({"test": 2})
    m = evaluate_segmentation(
        _ColourSigmoid(), manifest, blobs.__getitem__, recipe=SegmentationRecipe(mode="binary")
    )
    assert m["mode"] == "binary" and m["mean_dice"] == 1.0 and m["pixel_error"] == 0.0


def _one_item_manifest(discs: list[tuple[str, float, float, float]]) -> tuple[dict, dict]:
    img, shapes = draw(discs)
    data = encode_png(img)
    key = "images/touching.png"
    item = {
        "image_id": 1,
        "sha256": hashlib.sha256(data).hexdigest(),
        "blob_key": key,
        "width": SIZE,
        "height": SIZE,
        "split": "test",
        "shapes": shapes_to_json(shapes),
    }
    manifest = {"version": 1, "labels": list(LABELS), "split_seed": 0, "items": [item]}
    return manifest, {key: data}


# Two red cells whose outlines touch (centres one diameter apart) and a lone blue one.
TOUCHING = [("Red", 20.0, 30.0, 7.0), ("Red", 34.0, 30.0, 7.0), ("Blue", 50.0, 50.0, 6.0)]


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_count_error_is_measured_against_annotated_objects_not_truth_blobs(mode):
    """A pixel-perfect semantic prediction merges the touching cells into one blob; so
    does the rasterised truth, so a count read off it would claim no error. Against the
    two annotated cells the error is one."""
    manifest, blobs = _one_item_manifest(TOUCHING)
    model = _ColourOracle() if mode == "multiclass" else _ColourSigmoid()
    m = evaluate_segmentation(
        model, manifest, blobs.__getitem__, recipe=SegmentationRecipe(mode=mode)
    )
    red = m["per_class"]["Red"]
    assert red["dice"] == 1.0
    assert (red["true_count"], red["pred_count"], red["count_mae"]) == (2, 1, 1.0)
    assert m["per_class"]["Blue"]["count_mae"] == 0.0
    assert m["count_truth"] == "annotated_objects"


class _InstanceOracle(nn.Module):
    """The colour oracle in instance mode that never predicts a contour: touching cells of
    one colour come out as one interior blob joined at a neck."""

    def __init__(self):
        super().__init__()
        self.oracle = _ColourOracle()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.oracle(x)
        return torch.cat([logits, torch.full_like(logits[:, 1:], -1e4)], dim=1)


def test_instance_rules_chosen_on_val_are_what_evaluation_and_prediction_use():
    from labelloop.training.segmentation.kind import KIND

    manifest, blobs = _one_item_manifest(TOUCHING)
    val = {**manifest["items"][0], "split": "val", "image_id": 2}
    manifest["items"].append(val)
    recipe = SegmentationRecipe(mode="instance")
    model, fetch = _InstanceOracle(), blobs.__getitem__
    before = evaluate_segmentation(model, manifest, fetch, recipe=recipe)
    assert before["per_class"]["Red"]["pred_count"] == 1  # the pair merged
    assert before["instance_rules"]["split_depth"] == {"Red": 0.0, "Blue": 0.0}

    tuned = KIND.calibrate(model, manifest, fetch, labels=LABELS, recipe=recipe)
    assert tuned.instance_split_depth["Red"] > 0 and tuned.instance_split_depth["Blue"] == 0
    assert set(tuned.instance_min_area) == set(LABELS)
    assert tuned.instance_rule_objects == {"Red": 2, "Blue": 1}  # what the rules rest on
    after = evaluate_segmentation(model, manifest, fetch, recipe=tuned)
    assert after["per_class"]["Red"]["pred_count"] == 2
    assert after["per_class"]["Red"]["f1_50"] == 1.0
    image, _ = draw(TOUCHING)
    (pred,) = KIND.predict(model, [image], recipe=tuned, labels=LABELS)
    assert pred.counts == {"Red": 2, "Blue": 1}
    # Stored and reloaded with the model version's recipe, the rules survive.
    assert SegmentationRecipe.from_dict(tuned.model_dump()).instance_rules(LABELS) == (
        tuned.instance_rules(LABELS)
    )
    # Other modes and recipes that opt out are left as they are.
    off = recipe.model_copy(update={"tune_instances": False})
    assert KIND.calibrate(model, manifest, fetch, labels=LABELS, recipe=off) == off
    semantic = SegmentationRecipe()
    assert KIND.calibrate(_ColourOracle(), manifest, fetch, labels=LABELS, recipe=semantic) == (
        semantic
    )


def test_labels_thin_in_validation_take_their_rules_from_training_images_too():
    """Validation holds one lone red cell and no blue one. On it alone every blue minimum
    area ties at no error and the largest wins, which drops every blue cell. Training
    images join the basis of both labels (fewer than MIN_RULE_OBJECTS each in
    validation) and decide the minimum areas; no neck cut is taken from them, though
    their touching red pairs would ask for one (a network reads its training images more
    cleanly than new ones)."""
    from labelloop.training.segmentation.instances import MIN_AREAS
    from labelloop.training.segmentation.kind import KIND

    manifest, blobs = _one_item_manifest(TOUCHING)
    lone, lone_shapes = draw([("Red", 30.0, 30.0, 7.0)])
    data = encode_png(lone)
    blobs["images/lone.png"] = data
    val = {
        **manifest["items"][0],
        "split": "val",
        "image_id": 2,
        "blob_key": "images/lone.png",
        "sha256": hashlib.sha256(data).hexdigest(),
        "shapes": shapes_to_json(lone_shapes),
    }
    train = [{**manifest["items"][0], "split": "train", "image_id": 3 + k} for k in range(3)]
    recipe = SegmentationRecipe(mode="instance")
    model, fetch = _InstanceOracle(), blobs.__getitem__
    alone = KIND.calibrate(
        model, {**manifest, "items": [*manifest["items"], val]}, fetch, labels=LABELS, recipe=recipe
    )
    assert alone.instance_min_area["Blue"] == max(MIN_AREAS)
    assert alone.instance_rule_objects == {"Red": 1, "Blue": 0}
    both = {**manifest, "items": [*manifest["items"], val, *train]}
    tuned = KIND.calibrate(model, both, fetch, labels=LABELS, recipe=recipe)
    assert tuned.instance_min_area["Blue"] < np.pi * 6**2  # a blue cell is kept
    assert tuned.instance_split_depth == {"Red": 0.0, "Blue": 0.0} and not tuned.instance_opening
    assert tuned.instance_rule_objects == {"Red": 1 + 3 * 2, "Blue": 3}
    image, _ = draw(TOUCHING)
    (pred,) = KIND.predict(model, [image], recipe=tuned, labels=LABELS)
    assert pred.counts["Blue"] == 1
    (pred,) = KIND.predict(model, [image], recipe=alone, labels=LABELS)
    assert pred.counts["Blue"] == 0


def test_a_label_read_without_cuts_still_parts_a_blob_larger_than_any_of_its_cells():
    """As on the demo: validation holds one red cell, so red's rules come from training
    images too and take no neck cut; those images hold only lone cells. A touching pair
    on a new image is one blob twice the size of any annotated red cell, and is cut."""
    from labelloop.training.segmentation.kind import KIND

    manifest, blobs = _one_item_manifest(TOUCHING)
    items = list(manifest["items"])
    lone = [("Red", 12.0, 12.0, 7.0), ("Red", 48.0, 14.0, 7.0), ("Red", 14.0, 48.0, 7.0)]
    for k, discs in enumerate([lone[:1]] + [lone] * 4):
        image, shapes = draw(discs)
        data = encode_png(image)
        key = f"images/lone-{k}.png"
        blobs[key] = data
        items.append(
            {
                **items[0],
                "split": "val" if k == 0 else "train",
                "image_id": 2 + k,
                "blob_key": key,
                "sha256": hashlib.sha256(data).hexdigest(),
                "shapes": shapes_to_json(shapes),
            }
        )
    recipe = SegmentationRecipe(mode="instance")
    model, fetch = _InstanceOracle(), blobs.__getitem__
    tuned = KIND.calibrate(model, {**manifest, "items": items}, fetch, labels=LABELS, recipe=recipe)
    assert tuned.instance_split_depth["Red"] == 0 and not tuned.instance_opening
    assert tuned.instance_rule_objects["Red"] == 13
    # The largest annotated red interior: a disc of radius 7 less its contour ring.
    assert np.pi * 5**2 < tuned.instance_split_area["Red"] < np.pi * 7**2
    assert "Blue" not in tuned.instance_split_area  # no blue objects to bound it
    image, _ = draw(TOUCHING)
    (pred,) = KIND.predict(model, [image], recipe=tuned, labels=LABELS)
    assert pred.counts["Red"] == 2
    uncut = tuned.model_copy(update={"instance_split_area": None})
    (pred,) = KIND.predict(model, [image], recipe=uncut, labels=LABELS)
    assert pred.counts["Red"] == 1
    # The bound is stored and reloaded with the rest of the rules.
    assert SegmentationRecipe.from_dict(tuned.model_dump()).instance_split_area == (
        tuned.instance_split_area
    )


def _items(split: str, labels: list[str], n: int) -> list[dict]:
    shapes = [Ellipse(label=lb, x=10.0 + 20 * k, y=10.0, rx=5, ry=5) for k, lb in enumerate(labels)]
    return [{"split": split, "image_id": k, "shapes": shapes_to_json(shapes)} for k in range(n)]


def test_rule_basis_adds_training_images_only_for_thin_labels_and_only_as_many_as_needed():
    from labelloop.objects import MIN_RULE_OBJECTS
    from labelloop.training.segmentation.evaluate import (
        RULE_BASIS_OBJECTS,
        RULE_TRAIN_IMAGES,
        rule_basis,
    )

    val = _items("val", ["Red"], MIN_RULE_OBJECTS)
    manifest = {"items": val + _items("train", ["Red", "Blue"], 2 * RULE_BASIS_OBJECTS)}
    items, use, pooled, counts = rule_basis(manifest, LABELS)
    assert len(items) == MIN_RULE_OBJECTS + RULE_BASIS_OBJECTS  # Blue reached its target
    # Each item's annotated objects, read once: a red cell each, a blue one in training.
    assert counts[:MIN_RULE_OBJECTS].tolist() == [[1, 0]] * MIN_RULE_OBJECTS
    assert counts[MIN_RULE_OBJECTS:].tolist() == [[1, 1]] * RULE_BASIS_OBJECTS
    assert pooled.tolist() == [False, True]
    assert use[:MIN_RULE_OBJECTS].all() and not use[MIN_RULE_OBJECTS:, 0].any()
    assert use[MIN_RULE_OBJECTS:, 1].all()  # the training images count for Blue alone
    # A label absent from training too: at most RULE_TRAIN_IMAGES are read for it.
    items, _, _, _ = rule_basis({"items": val + _items("train", ["Red"], 100)}, LABELS)
    assert len(items) == MIN_RULE_OBJECTS + RULE_TRAIN_IMAGES
    # Validation enough for every label: training images stay out.
    enough = _items("val", ["Red", "Blue"], MIN_RULE_OBJECTS) + _items("train", ["Red"], 5)
    items, use, pooled, _ = rule_basis({"items": enough}, LABELS)
    assert len(items) == MIN_RULE_OBJECTS and use.all() and not pooled.any()
    assert rule_basis({"items": []}, LABELS)[0] == []


def test_instance_rules_must_be_positive():
    with pytest.raises(ValueError, match="instance_min_area"):
        SegmentationRecipe(mode="instance", instance_min_area={"Red": 0})
    with pytest.raises(ValueError, match="instance_split_depth"):
        SegmentationRecipe(mode="instance", instance_split_depth={"Red": -1.0})
    with pytest.raises(ValueError, match="instance_opening"):
        SegmentationRecipe(mode="instance", instance_opening={"Red": -1})
    with pytest.raises(ValueError, match="instance_split_area"):
        SegmentationRecipe(mode="instance", instance_split_area={"Red": -1})
    for sure in (-0.1, 1.0):
        with pytest.raises(ValueError, match="instance_seed_threshold"):
            SegmentationRecipe(mode="instance", instance_seed_threshold={"Red": sure})
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="instance_edge_share"):
            SegmentationRecipe(mode="instance", instance_edge_share=share)
    opened = SegmentationRecipe(mode="instance", instance_opening={"Red": 3})
    assert opened.instance_rules(LABELS)["opening"] == [3, 0]
    assert opened.instance_rules(LABELS)["seed_threshold"] == [0.0, 0.0]
    sure = SegmentationRecipe(mode="instance", instance_seed_threshold={"Blue": 0.7})
    assert sure.instance_rules(LABELS)["seed_threshold"] == [0.0, 0.7]
    # Unset, cells on the image's edge are held to the default share of the minimum area.
    assert opened.instance_rules(LABELS)["edge_share"] == [EDGE_AREA_SHARE] * 2
    whole = SegmentationRecipe(mode="instance", instance_edge_share=1.0)
    assert whole.instance_rules(LABELS)["edge_share"] == [1.0, 1.0]
