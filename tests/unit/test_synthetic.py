"""Synthetic smears: reproducible bytes, exact instance truth, and an export that parses back."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from labelloop.domain import Polygon, shapes_from_json
from labelloop.geometry import decode_mask, shape_mask
from labelloop.imaging import decode_image
from labelloop.labelstudio.convert import results_to_shapes
from labelloop.labelstudio.export import (
    image_reference,
    iter_export_tasks,
    resolve_local_image,
    task_annotations,
)
from labelloop.labelstudio.label_config import parse_label_config
from labelloop.synthetic import LABELS, generate_dataset, generate_smear, mask_outline, smear_seed


def _centre_raster(points, h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon: the exact reading of pixel coordinates."""
    yy, xx = np.mgrid[0:h, 0:w]
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    return MplPath(np.asarray(points)).contains_points(centres).reshape(h, w)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_same_seed_same_pixels_and_instances():
    a, b, c = generate_smear(11), generate_smear(11), generate_smear(12)
    assert a.image.dtype == np.uint8 and a.image.shape == (256, 256, 3)
    assert np.array_equal(a.image, b.image)
    assert [(lab, m.tobytes()) for lab, m in a.instances] == [
        (lab, m.tobytes()) for lab, m in b.instances
    ]
    assert not np.array_equal(a.image, c.image)


def test_instances_are_disjoint_visible_and_in_one_piece():
    from scipy import ndimage

    for seed in range(12):
        sample = generate_smear(seed)
        stack = np.stack([m for _, m in sample.instances])
        assert stack.sum(axis=0).max() == 1, f"seed {seed}: a pixel belongs to two instances"
        for label, mask in sample.instances:
            assert label in LABELS and mask.shape == (256, 256) and mask.dtype == bool
            assert ndimage.label(mask)[1] == 1, f"seed {seed}: a {label} is split"


def test_class_counts_sizes_and_colours():
    counts, wbc_images, rbc_radius = Counter(), 0, []
    for seed in range(30):
        sample = generate_smear(seed)
        per = Counter(label for label, _ in sample.instances)
        counts.update(per)
        assert 5 <= per["RBC"] <= 40 and per["WBC"] <= 2 and per["Platelets"] <= 6
        wbc_images += per["WBC"] > 0
        img = sample.image.astype(float)
        for label, mask in sample.instances:
            if label == "WBC":  # dark purple nucleus: blue above green by a margin
                dark = img[mask].sum(axis=1) < np.percentile(img[mask].sum(axis=1), 25)
                assert (img[mask][dark][:, 2] - img[mask][dark][:, 1]).mean() > 30
            elif label == "RBC" and mask.sum() > 0.9 * np.pi * 9**2:
                rbc_radius.append(np.sqrt(mask.sum() / np.pi))
        background = img[~np.any([m for _, m in sample.instances], axis=0)]
        assert background[:, 0].mean() > background[:, 1].mean()  # pinkish plasma
    assert set(counts) == set(LABELS)
    assert 8 <= wbc_images <= 26  # about 60 % of images
    assert 8.5 <= np.median(rbc_radius) <= 14.5


def test_outline_reproduces_the_mask():
    ious_exact, ious_project = [], []
    for seed in range(6):
        for label, mask in generate_smear(seed).instances:
            if label != "RBC":
                continue
            pts = mask_outline(mask)
            ious_exact.append(_iou(_centre_raster(pts, 256, 256), mask))
            ious_project.append(_iou(shape_mask(Polygon(label=label, points=pts), 256, 256), mask))
    assert min(ious_exact) > 0.99
    # the project's PIL rasteriser adds a boundary row and column, so it reads a bit larger
    assert min(ious_project) > 0.8 and np.mean(ious_project) > 0.85


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("smears")
    return out, generate_dataset(out, n_labeled=6, n_pool=3, seed=3)


def test_dataset_files_and_reproducible_bytes(dataset, tmp_path):
    out, summary = dataset
    assert summary.labeled_files == [f"images/smear_{i:04d}.png" for i in range(6)]
    assert summary.pool_files == [f"pool/smear_{i:04d}.png" for i in range(6, 9)]
    again = generate_dataset(tmp_path, n_labeled=6, n_pool=3, seed=3)
    assert again.labeled_counts == summary.labeled_counts
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert [str(f) for f in files] == sorted(
        [
            "export.json",
            "label_config.xml",
            "pool_truth.json",
            *summary.labeled_files,
            *summary.pool_files,
        ]
    )
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    other = generate_dataset(tmp_path / "other", n_labeled=1, n_pool=0, seed=4)
    assert (tmp_path / "other" / other.labeled_files[0]).read_bytes() != (
        out / summary.labeled_files[0]
    ).read_bytes()


def test_export_parses_back_per_class(dataset):
    out, summary = dataset
    config = parse_label_config((out / "label_config.xml").read_text())
    assert config.labels == list(LABELS)
    tasks = list(iter_export_tasks(out / "export.json"))
    assert [t["id"] for t in tasks] == [1, 2, 3, 4, 5, 6]
    for key in (
        "annotations",
        "predictions",
        "data",
        "meta",
        "created_at",
        "updated_at",
        "inner_id",
        "total_annotations",
        "project",
    ):
        assert key in tasks[0]
    ann = tasks[0]["annotations"][0]
    assert ann["was_cancelled"] is False and ann["ground_truth"] is False and ann["task"] == 1
    kinds: Counter = Counter()
    for index, task in enumerate(tasks):
        assert image_reference(task) == f"/data/local-files/?d=images/smear_{index:04d}.png"
        path = resolve_local_image(image_reference(task), out)
        sample = generate_smear(smear_seed(3, index))
        assert np.array_equal(decode_image(path.read_bytes()), sample.image)
        (exported,) = task_annotations(task, config)
        shapes = results_to_shapes(exported.results, file="export.json", record=exported.record)
        kinds.update((s.kind, s.label) for s in shapes)
        truth = [m for lab, m in sample.instances if lab == "WBC"]
        masks = [decode_mask(s.size, s.counts) for s in shapes if s.kind == "mask"]
        assert len(masks) == len(truth)
        assert all(np.array_equal(a, b) for a, b in zip(masks, truth, strict=True))
    n = summary.labeled_counts
    assert kinds == +Counter(
        {
            ("polygon", "RBC"): n["RBC"],
            ("box", "RBC"): n["RBC"],
            ("mask", "WBC"): n["WBC"],
            ("box", "WBC"): n["WBC"],
            ("polygon", "Platelets"): n["Platelets"],
            ("box", "Platelets"): n["Platelets"],
        }
    )  # + drops zero counts
    assert n["RBC"] > 30


def test_pool_truth_matches_the_pool(dataset):
    out, summary = dataset
    truth = json.loads((out / "pool_truth.json").read_text())
    assert sorted(truth) == ["smear_0006.png", "smear_0007.png", "smear_0008.png"]
    counts: Counter = Counter()
    for name, shapes_json in truth.items():
        shapes = shapes_from_json(shapes_json)
        boxes = [s for s in shapes if s.kind == "box"]
        counts.update(s.label for s in boxes)
        sample = generate_smear(smear_seed(3, int(name[6:10])))
        assert len(boxes) == len(sample.instances)
    assert dict(counts) == {k: v for k, v in summary.pool_counts.items() if v}
