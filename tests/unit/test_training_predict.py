from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from labelloop.errors import ConfigError, InputError
from labelloop.training.segmentation.network import build_network
from labelloop.training.segmentation.predict import load_model, predict_probs
from labelloop.training.segmentation.recipe import SegmentationRecipe

RECIPE = SegmentationRecipe(encoder_depth=3, decoder_channels=(16, 16, 8))


class _Payload:
    """Unpickling this runs `marker.touch()`: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.__class__.touch, (self.marker,))


def test_load_model_refuses_a_pickle_with_arbitrary_objects(tmp_path):
    marker = tmp_path / "code-ran"
    state = build_network(RECIPE, 3).state_dict()
    buf = io.BytesIO()
    torch.save({**state, "extra": _Payload(marker)}, buf)
    with pytest.raises(InputError, match="weights"):
        load_model(buf.getvalue(), RECIPE, 3)
    assert not marker.exists()
    # The same payload does run under plain pickle: the test would notice a regression.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_load_model_round_trip_and_mismatched_recipe(tmp_path):
    net = build_network(RECIPE, 3)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(path, RECIPE, 3)
    assert not loaded.training
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ConfigError, match="4 classes"):
        load_model(path, RECIPE, 4)
    with pytest.raises(InputError):
        load_model(b"not a torch file", RECIPE, 3)


def test_predict_probs_keeps_each_image_size_and_order():
    torch.manual_seed(0)
    net = build_network(RECIPE, 3).eval()
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for h, w in [(50, 70), (64, 64), (50, 70), (33, 97)]
    ]
    probs = predict_probs(net, images, batch_size=2)
    assert [p.shape for p in probs] == [(3, 50, 70), (3, 64, 64), (3, 50, 70), (3, 33, 97)]
    assert all(np.allclose(p.sum(0), 1.0, atol=1e-5) and p.dtype == np.float32 for p in probs)
    # Batching must not change results: image 2 alone gives the same probabilities.
    (alone,) = predict_probs(net, [images[2]])
    assert np.allclose(alone, probs[2], atol=1e-5)
    assert net.training is False
