from __future__ import annotations

import hashlib

import numpy as np
import pytest

from labelloop.domain import Box, Keypoint, Polygon, Tag, shapes_to_json
from labelloop.errors import ConfigError, InputError
from labelloop.geometry import mask_shape
from labelloop.imaging import encode_png
from labelloop.training.classification.data import (
    ClassificationDataModule,
    crop_window,
    cut_crop,
    load_samples,
)
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.recipe import parse_recipe


def _coded_image(h: int = 100, w: int = 120) -> np.ndarray:
    """R = x, G = y: every pixel says where it came from."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)


def test_crop_window_is_a_square_around_the_box_with_margin():
    # 20 x 10 box centred at (20, 25); longer side 20 plus 25 % on each side -> 30.
    window, clipped = crop_window((10, 20, 30, 30), 0.25, 120, 100)
    assert window == (5, 10, 35, 40)
    assert clipped == window
    image = _coded_image()
    crop = cut_crop(image, (10, 20, 30, 30), 0.25, size=30)  # no resize at this size
    assert np.array_equal(crop, image[10:40, 5:35])
    assert cut_crop(image, (10, 20, 30, 30), 0.25, size=16).shape == (16, 16, 3)


def test_crop_is_clipped_at_the_border_and_filled_by_reflection():
    image = _coded_image()
    window, clipped = crop_window((0, 0, 10, 10), 0.5, 120, 100)
    assert window == (-5, -5, 15, 15)
    assert clipped == (0, 0, 15, 15)
    crop = cut_crop(image, (0, 0, 10, 10), 0.5, size=20)
    # The image part sits where the window says, so the box stays centred.
    assert np.array_equal(crop[5:, 5:], image[0:15, 0:15])
    # Above the image: reflected rows (y = -1 shows row 1), never black padding.
    assert (crop[4, 5:, 1] == 1).all() and (crop[0, 5:, 1] == 5).all()
    assert (crop[5:, 4, 0] == 1).all()
    # Bottom-right corner, clipped on the other two sides.
    window, clipped = crop_window((110, 90, 120, 100), 0.5, 120, 100)
    assert clipped == (105, 85, 120, 100) and window == (105, 85, 125, 105)
    crop = cut_crop(image, (110, 90, 120, 100), 0.5, size=20)
    assert np.array_equal(crop[:15, :15], image[85:100, 105:120])
    with pytest.raises(ValueError, match="outside"):
        cut_crop(image, (130, 10, 140, 20), 0.1, size=16)


def _manifest(items: list[tuple[str, list]], labels=("RBC", "WBC")) -> tuple[dict, dict]:
    blobs: dict[str, bytes] = {}
    out = []
    rng = np.random.default_rng(0)
    for i, (split, shapes) in enumerate(items):
        data = encode_png(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
        key = hashlib.sha256(data).hexdigest() + str(i)
        blobs[key] = data
        out.append(
            {
                "image_id": 100 + i,
                "sha256": key,
                "blob_key": key,
                "width": 80,
                "height": 60,
                "split": split,
                "shapes": shapes_to_json(shapes),
            }
        )
    return {"project": {"task": "classification"}, "labels": list(labels), "items": out}, blobs


def test_crops_keep_their_image_split_and_skip_shapes_without_area():
    box = Box(label="RBC", x=5, y=5, w=10, h=10)
    square = np.zeros((60, 80), bool)
    square[20:30, 40:52] = True
    shapes = {
        "train": [box, Box(label="WBC", x=30, y=10, w=20, h=20), Keypoint(label="RBC", x=1, y=1)],
        "val": [Polygon(label="WBC", points=[(10, 10), (30, 10), (20, 40)]), Tag(label="RBC")],
        "test": [mask_shape(square, "RBC"), box, box],
    }
    manifest, blobs = _manifest(
        [("train", shapes["train"]), ("val", shapes["val"]), ("test", shapes["test"])] * 2
    )
    recipe = ClassificationRecipe(source="crops", image_size=24, encoder="test_resnet")
    dm = ClassificationDataModule(manifest, recipe, blobs.__getitem__)
    dm.setup("fit")
    ids = {s: {it["image_id"] for it in manifest["items"] if it["split"] == s} for s in shapes}
    train, val = dm.train_set.samples, dm.val_set.samples
    assert set(train.image_ids) == ids["train"] and len(train) == 4
    assert set(val.image_ids) == ids["val"] and len(val) == 2
    assert train.targets.tolist() == [0, 1, 0, 1] and val.targets.tolist() == [1, 1]
    assert train.crops.shape == (4, 24, 24, 3) and train.crops.dtype == np.uint8
    test = load_samples(
        [it for it in manifest["items"] if it["split"] == "test"],
        manifest["labels"],
        recipe,
        blobs.__getitem__,
    )
    assert set(test.image_ids) == ids["test"] and len(test) == 6
    assert np.bincount(dm.train_set.samples.targets).tolist() == dm.class_counts().tolist()


def test_image_source_takes_one_tag_per_image():
    manifest, blobs = _manifest(
        [("train", [Tag(label="WBC")]), ("train", []), ("train", [Tag(label="RBC"), box_rbc()])]
    )
    recipe = ClassificationRecipe(source="image", image_size=32, encoder="test_resnet")
    samples = load_samples(manifest["items"], manifest["labels"], recipe, blobs.__getitem__)
    # The untagged image is skipped; boxes do not matter to a whole-image classifier.
    assert samples.targets.tolist() == [1, 0] and samples.image_ids == [100, 102]
    assert samples.crops.shape == (2, 32, 32, 3)

    bad, blobs = _manifest([("train", [Tag(label="RBC"), Tag(label="WBC")])])
    with pytest.raises(InputError, match=r"record 100.*several class tags"):
        load_samples(bad["items"], bad["labels"], recipe, blobs.__getitem__)
    bad, blobs = _manifest([("train", [Tag(label="Platelet")])])
    with pytest.raises(InputError, match=r"record 100.*'Platelet' is not one of"):
        load_samples(bad["items"], bad["labels"], recipe, blobs.__getitem__)


def box_rbc() -> Box:
    return Box(label="RBC", x=1, y=1, w=5, h=5)


def test_bad_boxes_and_empty_training_sets_are_clear_errors():
    recipe = ClassificationRecipe(source="crops", image_size=16, encoder="test_resnet")
    for shape, reason in [
        (Box(label="RBC", x=200, y=10, w=5, h=5), "outside"),
        (Box(label="RBC", x=10, y=10, w=0, h=5), "no area"),
        (Box(label="Platelet", x=10, y=10, w=5, h=5), "not one of"),
    ]:
        manifest, blobs = _manifest([("train", [shape])])
        with pytest.raises(InputError, match=rf"record 100.*{reason}"):
            load_samples(manifest["items"], manifest["labels"], recipe, blobs.__getitem__)
    manifest, blobs = _manifest([("train", [Tag(label="RBC")]), ("val", [box_rbc()])])
    dm = ClassificationDataModule(manifest, recipe, blobs.__getitem__)
    with pytest.raises(ConfigError, match="no training samples"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match="at least 2 labels"):
        ClassificationDataModule({**manifest, "labels": ["RBC"]}, recipe, blobs.__getitem__)
    with pytest.raises(ConfigError, match="segmentation"):
        ClassificationDataModule(
            {**manifest, "project": {"task": "segmentation"}}, recipe, blobs.__getitem__
        )


def test_recipe_typos_and_unknown_backbones_are_refused():
    r = parse_recipe({"task": "classification", "source": "crops", "crop_margin": 0.3})
    assert isinstance(r, ClassificationRecipe) and r.encoder_weights is None
    assert r.recipe_hash() != r.with_overrides({"crop_margin": 0.2}).recipe_hash()
    with pytest.raises(ConfigError, match="crop_marign"):
        ClassificationRecipe.from_dict({"crop_marign": 0.2})
    with pytest.raises(ConfigError, match="source"):
        ClassificationRecipe.from_dict({"source": "crop"})
    with pytest.raises(ConfigError, match=r"'resnet181' is not a timm model"):
        ClassificationRecipe.from_dict({"encoder": "resnet181"})
    with pytest.raises(ConfigError, match="label_smoothing"):
        ClassificationRecipe.from_dict({"label_smoothing": 1.5})
    with pytest.raises(ConfigError, match="balance"):
        ClassificationRecipe.from_str("balance: oversample\n")


def test_class_balancing_by_sampler_or_by_loss_weights():
    rare = Box(label="WBC", x=30, y=10, w=20, h=20)
    manifest, blobs = _manifest([("train", [box_rbc()] * 9 + [rare])] * 4)
    base = {"source": "crops", "image_size": 16, "encoder": "test_resnet", "batch_size": 40}
    sampled = ClassificationRecipe(**base, balance="sampler", seed=3)
    dm = ClassificationDataModule(manifest, sampled, blobs.__getitem__)
    dm.setup("fit")
    assert dm.class_counts().tolist() == [36, 4] and dm.class_weights() is None
    drawn = np.concatenate([y.numpy() for _ in range(5) for _, y in dm.train_dataloader()])
    assert 0.35 < drawn.mean() < 0.65  # about half WBC, from 10 % of the crops
    weighted = ClassificationDataModule(
        manifest, ClassificationRecipe(**base, balance="loss"), blobs.__getitem__
    )
    w = weighted.class_weights()
    assert w[1] / w[0] == pytest.approx(3.0)  # 1 / sqrt(frequency): sqrt(36 / 4)
    assert float((w * np.array([36, 4])).sum() / 40) == pytest.approx(1.0)
    plain = ClassificationDataModule(
        manifest, ClassificationRecipe(**base, balance="none"), blobs.__getitem__
    )
    assert plain.class_weights() is None
