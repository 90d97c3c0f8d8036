from __future__ import annotations

import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.training.segmentation.network import build_network
from labelloop.training.segmentation.recipe import SegmentationRecipe


def test_bad_encoder_error_lists_valid_choices():
    with pytest.raises(ConfigError) as info:
        build_network(SegmentationRecipe(encoder="resnet17"), 3)
    msg = str(info.value)
    assert "resnet17" in msg and "resnet18" in msg and "mobilenet_v2" in msg and "tu-" in msg


def test_bad_arch_and_bad_timm_name_are_config_errors():
    with pytest.raises(ConfigError, match="unetplusplus"):
        build_network(SegmentationRecipe(arch="vnet"), 3)
    with pytest.raises(ConfigError, match="not a timm model"):
        build_network(SegmentationRecipe(encoder="tu-no_such_net"), 3)


def test_network_maps_image_to_class_logits():
    net = build_network(SegmentationRecipe(encoder_depth=3), 4).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96)
