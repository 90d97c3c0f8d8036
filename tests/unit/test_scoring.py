from __future__ import annotations

import numpy as np
import pytest

from labelloop.errors import ConfigError
from labelloop.scoring import available_methods, get_method

METHODS = ["entropy_mean", "margin_mean", "least_confidence_mean"]


@pytest.mark.parametrize("name", METHODS)
def test_uniform_scores_one_and_one_hot_scores_zero(name):
    method = get_method(name)
    assert method.score(np.full((4, 8, 8), 0.25)) == pytest.approx(1.0)
    one_hot = np.zeros((4, 8, 8))
    one_hot[2] = 1.0
    assert method.score(one_hot) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_less_confident_images_score_higher(name):
    sure = np.zeros((3, 4, 4))
    sure[0], sure[1], sure[2] = 0.9, 0.05, 0.05
    unsure = np.zeros((3, 4, 4))
    unsure[0], unsure[1], unsure[2] = 0.5, 0.4, 0.1
    method = get_method(name)
    assert 0 < method.score(sure) < method.score(unsure) < 1


def test_entropy_of_half_uncertain_image_is_mean_of_pixels():
    probs = np.zeros((2, 1, 2))
    probs[:, 0, 0] = 0.5  # entropy log 2 -> 1 after normalising
    probs[0, 0, 1] = 1.0  # certain -> 0
    assert get_method("entropy_mean").score(probs) == pytest.approx(0.5)


def test_unknown_method_lists_valid_choices():
    assert set(METHODS) <= set(available_methods("segmentation"))
    with pytest.raises(ConfigError, match="entropy_mean") as info:
        get_method("entropy_max")
    assert "margin_mean" in str(info.value)
