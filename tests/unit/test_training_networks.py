from __future__ import annotations

import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.training.segmentation.network import build_network
from labelloop.training.segmentation.recipe import SegmentationRecipe


def test_bad_encoder_error_lists_valid_choices():
    # Refused when the recipe is made, with the message the network builder would give.
    with pytest.raises(ConfigError) as info:
        SegmentationRecipe.from_dict({"encoder": "resnet17"})
    msg = str(info.value)
    assert "resnet17" in msg and "resnet18" in msg and "mobilenet_v2" in msg and "tu-" in msg


def test_bad_arch_and_bad_timm_name_are_config_errors():
    with pytest.raises(ConfigError, match="unetplusplus"):
        build_network(SegmentationRecipe(arch="vnet"), 3)
    with pytest.raises(ConfigError, match="not a timm model"):
        SegmentationRecipe.from_dict({"encoder": "tu-no_such_net"})


def test_network_maps_image_to_class_logits():
    net = build_network(SegmentationRecipe(encoder_depth=3), 4).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96)


@pytest.mark.parametrize(
    ("encoder", "source", "saved_key", "encoder_key"),
    [
        # A timm ImageNet resnet18's state dict (its classifier is left out) ...
        ("resnet18", "resnet18", "layer1.0.conv1.weight", "layer1.0.conv1.weight"),
        # ... and a timm model's under smp's "tu-" encoders.
        ("tu-test_resnet", "test_resnet", "conv1.0.weight", "model.conv1.0.weight"),
    ],
)
def test_encoder_weights_from_a_locally_saved_state_dict(
    tmp_path, encoder, source, saved_key, encoder_key
):
    import timm

    torch.manual_seed(0)
    state = timm.create_model(source, num_classes=1000).state_dict()
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as DDP saves it
    recipe = SegmentationRecipe(encoder=encoder, encoder_depth=3, encoder_weights=str(path))
    net = build_network(recipe, 2)
    assert torch.equal(net.encoder.state_dict()[encoder_key], state[saved_key])
    fresh = build_network(recipe.model_copy(update={"encoder_weights": None}), 2)
    assert not torch.equal(fresh.encoder.state_dict()[encoder_key], state[saved_key])
    # Weights of another network, a missing file and a file that is no state dict: refused.
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(ConfigError, match="another network"):
        build_network(recipe.model_copy(update={"encoder_weights": str(other)}), 2)
    with pytest.raises(ConfigError, match="not found"):
        build_network(recipe.model_copy(update={"encoder_weights": str(tmp_path / "no.pth")}), 2)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="state_dict"):
        build_network(recipe.model_copy(update={"encoder_weights": str(tmp_path / "junk.pt")}), 2)


def test_full_resolution_branch_joins_the_decoder_and_reloads_from_its_state_dict():
    """The branch's weights are part of the saved state, the smp names the rest of the code
    reaches for (encoder, segmentation_head) stay, and arches without a full-resolution
    decoder refuse it when the recipe is made."""
    from labelloop.training.segmentation.network import FullResolutionUnet

    recipe = SegmentationRecipe(mode="binary", encoder_depth=3, full_resolution_branch=8)
    torch.manual_seed(0)
    net = build_network(recipe, 1).eval()
    assert isinstance(net, FullResolutionUnet)
    assert any(k.startswith("branch.") for k in net.state_dict())
    again = build_network(recipe, 1, pretrained=False).eval()
    again.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        assert net(x).shape == (1, 1, 64, 96)
        assert torch.equal(net(x), again(x))
        assert net.encoder(x)[-1].shape[1] == net.encoder.out_channels[-1]
    plain = build_network(recipe.model_copy(update={"full_resolution_branch": None}), 1)
    assert set(net.state_dict()) - set(plain.state_dict()) == {
        k for k in net.state_dict() if k.startswith(("branch.", "fuse."))
    }
    dropped = build_network(recipe.model_copy(update={"dropout": 0.2}), 1)
    assert isinstance(dropped.segmentation_head[0], torch.nn.Dropout2d)
    with pytest.raises(ConfigError, match="applies only to arch 'unet'"):
        SegmentationRecipe.from_dict({"arch": "fpn", "full_resolution_branch": 8})
    assert '"full_resolution_branch"' not in SegmentationRecipe().canonical_json()
    assert (
        recipe.recipe_hash()
        != recipe.model_copy(update={"full_resolution_branch": 16}).recipe_hash()
    )
