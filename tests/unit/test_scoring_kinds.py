"""Detection and classification uncertainty: ordering, range, edge cases, registry."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.errors import ConfigError
from labelloop.scoring import available_methods, get_method


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
def test_classification_methods_rank_uncertain_above_certain(name):
    m = get_method(name, "classification")
    certain = m.score(np.array([0.98, 0.01, 0.01]))
    torn = m.score(np.array([0.5, 0.49, 0.01]))
    uniform = m.score(np.full(3, 1 / 3))
    assert 0.0 <= certain < torn <= uniform <= 1.0
    assert uniform == pytest.approx(1.0) or name == "margin"


@pytest.mark.parametrize("name", ["box_entropy_mean", "least_confidence_max"])
def test_detection_methods_read_box_scores(name):
    m = get_method(name, "detection")
    assert m.reads == "scores"
    sure = m.score_arrays({"scores": np.array([0.97, 0.99, 0.95])})
    doubtful = m.score_arrays({"scores": np.array([0.97, 0.5, 0.95])})
    assert 0.0 <= sure < doubtful <= 1.0
    # Finding nothing on a smear is the model being lost, not sure.
    assert m.score_arrays({"scores": np.zeros(0)}) == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.score(np.array([1.5]))
    with pytest.raises(ConfigError, match="needs 'scores'"):
        m.score_arrays({"probs": np.ones(3)})


def test_methods_belong_to_their_task():
    assert set(available_methods("detection")) == {
        "box_entropy_mean",
        "least_confidence_max",
        "class_entropy_mean",
        "one_minus_conf_mean",
        "tta_localisation",
        "count_variance",
    }
    assert set(available_methods("classification")) == {
        "entropy",
        "margin",
        "least_confidence",
        "bald",
    }
    with pytest.raises(ConfigError, match="valid choices: box_entropy_mean"):
        get_method("entropy_mean", "detection")
    # One name, one idea, two tasks: the task decides which.
    assert get_method("bald", "classification").task == "classification"
    assert get_method("bald", "segmentation").task == "segmentation"
    with pytest.raises(ConfigError, match="several tasks"):
        get_method("bald")
