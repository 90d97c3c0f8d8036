"""The error breakdown sorts each unmatched box by what the annotation holds under it; a
box put in the wrong class would move AP from one column of BENCHMARKS to another."""

from __future__ import annotations

import numpy as np

from benchmarks.detection_errors import error_kinds
from labelloop.training.detection.predict import Detections


def test_each_box_is_a_match_or_the_error_its_overlap_with_the_annotation_says():
    truth = np.array([[0, 0, 40, 40], [100, 0, 140, 40], [200, 0, 240, 40]], np.float32)
    truth_labels = np.array([0, 0, 1])
    boxes = np.array(
        [
            [1, 1, 41, 41],  # the first cell: a match
            [0, 0, 40, 38],  # the same cell again, lower: a duplicate
            [120, 0, 160, 40],  # the second cell, half off (IoU 1/3): localisation
            [201, 0, 241, 40],  # the third cell, but it is of class 1: confusion
            [300, 300, 340, 340],  # nothing annotated: background
            [200, 0, 240, 40],  # the third cell in its own class: a match
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)
    labels = np.array([0, 0, 0, 0, 0, 1])
    det = Detections(boxes, scores, labels, np.ones((6, 2), np.float32))
    kinds = error_kinds(det, truth, truth_labels)
    assert list(kinds) == ["tp", "duplicate", "localisation", "confusion", "background", "tp"]


def test_an_image_without_annotation_has_only_background_boxes():
    det = Detections(
        np.array([[0, 0, 10, 10]], np.float32),
        np.array([0.9], np.float32),
        np.array([0]),
        np.ones((1, 1), np.float32),
    )
    assert list(error_kinds(det, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))) == [
        "background"
    ]
