from __future__ import annotations

import numpy as np
import pytest
import torch

from labelloop.errors import ConfigError, InputError
from labelloop.training.segmentation.data import (
    IGNORE_INDEX,
    SegmentationDataModule,
    SegmentationDataset,
    build_train_transform,
    load_item,
    pad_to_stride,
)
from labelloop.training.segmentation.recipe import SegmentationRecipe
from tests.unit.segmentation_fixtures import COLOURS, LABELS, make_manifest


def test_load_item_rasterises_shapes_to_the_class_of_each_colour():
    manifest, blobs = make_manifest({"train": 3})
    for item in manifest["items"]:
        image, target = load_item(item, LABELS, blobs.__getitem__)
        assert image.shape == (64, 64, 3) and target.shape == (64, 64)
        for i, name in enumerate(LABELS, start=1):
            assert (image[target == i] == COLOURS[name]).all()
        assert {s["label"] for s in item["shapes"]} == {
            LABELS[c - 1] for c in np.unique(target) if c
        }


def test_train_dataset_crops_to_image_size_and_keeps_classes():
    manifest, blobs = make_manifest({"train": 4})
    recipe = SegmentationRecipe(image_size=32, augment={"enabled": False})
    ds = SegmentationDataset(
        manifest["items"], LABELS, blobs.__getitem__, build_train_transform(recipe), repeats=3
    )
    assert len(ds) == 12
    x, y = ds[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (32, 32) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}


def test_eval_dataset_pads_to_stride_and_marks_padding_ignored():
    manifest, blobs = make_manifest({"val": 1})
    ds = SegmentationDataset(manifest["items"], LABELS, blobs.__getitem__)
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)  # a multiple of 32: untouched
    img = np.zeros((40, 50, 3), np.uint8)
    assert pad_to_stride(img).shape == (64, 64, 3)
    padded = pad_to_stride(np.ones((40, 50), np.uint8), fill=IGNORE_INDEX)
    assert (padded[40:] == IGNORE_INDEX).all() and (padded[:40, :50] == 1).all()


def test_datamodule_batches_and_class_count():
    manifest, blobs = make_manifest({"train": 5, "val": 2})
    dm = SegmentationDataModule(
        manifest, SegmentationRecipe(image_size=32, batch_size=4), blobs.__getitem__
    )
    dm.setup("fit")
    assert dm.num_classes == 3
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32)
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (2, 3, 64, 64) and yv.shape == (2, 64, 64)


def test_bad_inputs_fail_before_training():
    manifest, blobs = make_manifest({"train": 1})
    manifest["items"][0]["width"] = 65
    with pytest.raises(InputError, match="65x64"):
        load_item(manifest["items"][0], LABELS, blobs.__getitem__)
    manifest["project"]["task"] = "detection"
    with pytest.raises(ConfigError, match="detection"):
        SegmentationDataModule(manifest, SegmentationRecipe(), blobs.__getitem__)


def test_binary_targets_are_per_label_masks_that_may_overlap():
    manifest, blobs = make_manifest({"train": 1})
    item = manifest["items"][0]
    shapes = list(item["shapes"])
    first = dict(shapes[0])
    # The same region under the other label: both masks must hold it.
    other = next(name for name in LABELS if name != first["label"])
    item["shapes"] = [*shapes, {**first, "label": other}]
    _, masks = load_item(item, LABELS, blobs.__getitem__, mode="binary")
    _, classes = load_item(item, LABELS, blobs.__getitem__)
    assert masks.shape == (64, 64, 2) and set(np.unique(masks).tolist()) <= {0, 1}
    both = (masks[..., 0] == 1) & (masks[..., 1] == 1)
    assert both.any() and (masks.any(-1) == (classes > 0)).all()

    ds = SegmentationDataset([item], LABELS, blobs.__getitem__, mode="binary")
    _, y = ds[0]
    assert y.shape == (2, 64, 64) and y.dtype == torch.int64


def test_distortion_warps_image_and_mask_alike():
    manifest, blobs = make_manifest({"train": 2})
    recipe = SegmentationRecipe(
        mode="binary", image_size=64, distortion=1.0, augment={"flips": False, "rot90": False}
    )
    ds = SegmentationDataset(
        manifest["items"], LABELS, blobs.__getitem__, build_train_transform(recipe), mode="binary"
    )
    x, y = ds[0]
    assert set(torch.unique(y).tolist()) <= {0, 1}
    # Disc pixels stay labelled as their disc after warping: the red channel is high
    # exactly where label "Red" is (allowing for interpolated edge pixels).
    red = x[0] > x[2] + 1.0
    agree = (red == (y[0] == 1)).float().mean()
    assert agree > 0.97
    plain = SegmentationRecipe(mode="binary", image_size=64, augment={"enabled": False})
    _, y0 = SegmentationDataset(
        manifest["items"], LABELS, blobs.__getitem__, build_train_transform(plain), mode="binary"
    )[0]
    assert not torch.equal(y, y0)  # something was warped
