"""Temperature scaling: fitted on validation, stored with the model version, applied to
every prediction the version makes."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.registry import load_model_version
from labelloop.training.calibration import (
    apply_temperature,
    calibrate,
    ece,
    fit_temperature,
    reliability,
    sigmoid_temperature,
    softmax_temperature,
    temperature_of,
)
from labelloop.training.detection.calibrate import match_boxes, overlaps
from labelloop.training.detection.predict import Detections
from labelloop.training.segmentation.kind import KIND
from labelloop.training.segmentation.recipe import SegmentationRecipe
from tests.unit.segmentation_fixtures import make_manifest


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident_softmax(n=4000, c=3, true_t=3.0, seed=0):
    """Labels drawn from softmax(z), the model reporting softmax(z * true_t): the
    over-confidence temperature scaling exists to undo."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, c))
    y = np.array([rng.choice(c, p=p) for p in _softmax(z)])
    return _softmax(z * true_t), y


def _overconfident_sigmoid(n=4000, true_t=0.4, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return 1 / (1 + np.exp(-z / true_t)), y


def test_softmax_temperature_equals_scaling_the_logits():
    z = np.random.default_rng(0).normal(0, 2, (5, 4))
    for t in (0.5, 1.0, 2.5):
        assert np.allclose(softmax_temperature(_softmax(z), t, axis=1), _softmax(z / t))
    # Along the first axis too ((C, H, W) segmentation probabilities).
    chw = _softmax(z).T.reshape(4, 5, 1)
    assert np.allclose(softmax_temperature(chw, 2.0, axis=0)[:, :, 0], _softmax(z / 2).T)


def test_sigmoid_temperature_equals_scaling_the_logit():
    z = np.linspace(-6, 6, 13)
    assert np.allclose(sigmoid_temperature(1 / (1 + np.exp(-z)), 3.0), 1 / (1 + np.exp(-z / 3)))


@pytest.mark.parametrize(
    ("data", "mode", "true_t"),
    [(_overconfident_softmax(), "softmax", 3.0), (_overconfident_sigmoid(), "sigmoid", 1 / 0.4)],
)
def test_fitting_recovers_the_temperature_and_lowers_ece(data, mode, true_t):
    probs, y = data
    t = fit_temperature(probs, y, mode)
    assert t == pytest.approx(true_t, rel=0.15)
    fit = calibrate(probs, y, mode)
    assert fit["ece_after"] < 0.5 * fit["ece_before"] and fit["ece_after"] < 0.03
    assert fit["nll_after"] < fit["nll_before"]
    assert sum(r["count"] for r in fit["reliability_after"]) == len(y)


def test_calibrated_probabilities_keep_the_argmax():
    probs, _ = _overconfident_softmax(n=200)
    after = apply_temperature(probs, 3.0, "softmax", axis=1)
    assert (after.argmax(1) == probs.argmax(1)).all() and after.max(1).mean() < probs.max(1).mean()


def test_ece_of_a_perfectly_calibrated_set_is_small_and_of_a_lying_one_large():
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    honest = (rng.random(20000) < p).astype(int)
    assert ece(p, honest, "sigmoid") < 0.02
    assert ece(np.full(1000, 0.95), np.zeros(1000), "sigmoid") == pytest.approx(0.95)
    bins = reliability(np.full(10, 0.95), np.ones(10), "sigmoid")
    assert bins == [{"lo": 0.9333, "hi": 1.0, "count": 10, "confidence": 0.95, "accuracy": 1.0}]


def test_detection_boxes_match_same_class_truth_once_in_score_order():
    det = Detections(
        boxes=np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], "f4"),
        scores=np.array([0.9, 0.8, 0.7, 0.6], "f4"),
        labels=np.array([0, 0, 1, 1]),
        class_probs=np.zeros((4, 2), "f4"),
    )
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], "f4"), np.array([0, 0])
    # The duplicate (0.8) finds its box taken; box 3 is the wrong class at the right place.
    assert match_boxes(det, *truth).tolist() == [1, 0, 0, 0]
    # A caller's IoU table gives the same matches and is left as it was.
    iou = overlaps(det, truth[0])
    before = iou.copy()
    assert match_boxes(det, *truth, iou=iou).tolist() == [1, 0, 0, 0]
    assert np.array_equal(iou, before)


def test_training_stores_the_fit_and_the_version_predicts_calibrated(tmp_path):
    manifest, blobs = make_manifest({"train": 6, "val": 2})
    recipe = SegmentationRecipe(
        epochs=2,
        encoder="resnet18",
        encoder_depth=3,
        decoder_channels=[16, 16, 8],
        image_size=64,
        batch_size=4,
    )
    out = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path)
    cal = out.metrics["calibration"]
    assert cal["mode"] == "softmax" and cal["n"] > 1000 and cal["temperature"] > 0
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9
    assert temperature_of({"val": out.metrics}) == cal["temperature"]
    probs = np.random.default_rng(0).dirichlet([1, 1, 1, 1], (8, 8)).transpose(2, 0, 1)
    arrays = KIND.calibrated({"probs": probs, "label_map": np.zeros((8, 8))}, 2.0)
    assert np.allclose(arrays["probs"], softmax_temperature(probs, 2.0, axis=0))
    assert (
        arrays["label_map"] is not None and KIND.calibrated({"probs": probs}, 1.0)["probs"] is probs
    )


def test_a_model_version_loads_with_its_temperature(ctx, tmp_path):
    from labelloop.datasets.freeze import freeze
    from labelloop.db.models import ModelVersion
    from labelloop.ingest import ingest_path
    from labelloop.projects import create_project
    from labelloop.runs import execute_run, request_run
    from tests.factories import small_export

    with ctx.db.session() as s:
        create_project(s, "cal", "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, "cal", small_export(tmp_path / "src", n=6))
    dv = freeze(ctx, "cal").dataset_version_id
    mv_id = execute_run(
        ctx, request_run(ctx, dv, overrides={"epochs": 1, "batch_size": 2, "image_size": 64}).run_id
    )
    with ctx.db.session() as s:
        metrics = s.get(ModelVersion, mv_id).metrics
    assert "ece_before" in metrics["val"]["calibration"]
    loaded = load_model_version(ctx, mv_id)
    assert loaded.temperature == metrics["val"]["calibration"]["temperature"]


def test_detection_and_classification_rescale_their_own_arrays():
    from labelloop.training.classification.kind import KIND as CLS
    from labelloop.training.detection.kind import KIND as DET

    arrays = {
        "boxes": np.array([[0, 0, 4, 4]], "f4"),
        "scores": np.array([0.9], "f4"),
        "labels": np.array([1]),
        "class_probs": np.array([[0.2, 0.9]], "f4"),
    }
    out = DET.calibrated(arrays, 2.0)
    assert out["scores"][0] == pytest.approx(sigmoid_temperature(np.array([0.9]), 2.0)[0])
    assert np.allclose(out["class_probs"], sigmoid_temperature(arrays["class_probs"], 2.0))
    assert out["boxes"] is arrays["boxes"] and out["labels"] is arrays["labels"]
    probs = np.array([0.7, 0.2, 0.1])
    assert np.allclose(
        CLS.calibrated({"probs": probs}, 0.5)["probs"], softmax_temperature(probs, 0.5)
    )
