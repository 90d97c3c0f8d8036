from __future__ import annotations

import pytest

from labelloop.errors import ConfigError
from labelloop.training.segmentation.recipe import SegmentationRecipe


def test_hash_is_stable_across_construction_and_yaml_round_trip():
    a = SegmentationRecipe(lr=0.01, epochs=5)
    b = SegmentationRecipe.from_str("epochs: 5\nlr: 0.01\n")
    assert a.recipe_hash() == b.recipe_hash()
    assert SegmentationRecipe.from_str(a.to_yaml()).recipe_hash() == a.recipe_hash()
    assert len(a.recipe_hash()) == 64


def test_hash_changes_with_any_field_including_nested():
    base = SegmentationRecipe()
    changed = [
        SegmentationRecipe(lr=base.lr * 2),
        SegmentationRecipe(seed=1),
        SegmentationRecipe(loss="focal"),
        SegmentationRecipe.from_dict({"augment": {"hue_shift": 0}}),
    ]
    hashes = {r.recipe_hash() for r in changed}
    assert base.recipe_hash() not in hashes
    assert len(hashes) == len(changed)


def test_resume_key_ignores_budget_only():
    base = SegmentationRecipe()
    assert SegmentationRecipe(epochs=99, max_time_s=10).resume_key() == base.resume_key()
    assert SegmentationRecipe(lr=0.5).resume_key() != base.resume_key()


def test_unknown_fields_are_rejected_with_their_name():
    with pytest.raises(ConfigError, match="learning_rate"):
        SegmentationRecipe.from_str("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"augment\.rotate"):
        SegmentationRecipe.from_dict({"augment": {"rotate": True}})


def test_inconsistent_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 32"):
        SegmentationRecipe.from_dict({"image_size": 100})
    with pytest.raises(ConfigError, match="decoder_channels"):
        SegmentationRecipe.from_dict({"encoder_depth": 5, "decoder_channels": [16, 8]})
    with pytest.raises(ConfigError, match="loss"):
        SegmentationRecipe.from_dict({"loss": "hinge"})
    with pytest.raises(ConfigError, match="precision"):
        SegmentationRecipe.from_dict({"precision": "16"})
    path = tmp_path / "r.yaml"
    path.write_text("- not\n- a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        SegmentationRecipe.from_yaml(path)


def test_encoder_depth_alone_gets_matching_decoder_channels():
    r = SegmentationRecipe.from_dict({"encoder_depth": 5})
    assert r.decoder_channels is not None and len(r.decoder_channels) == 5
    assert (
        SegmentationRecipe.from_dict({"encoder_depth": 3}).decoder_channels
        == SegmentationRecipe(encoder_depth=3).decoder_channels
    )


def test_with_overrides_validates_and_merges():
    base = SegmentationRecipe()
    r = base.with_overrides({"encoder_depth": 4, "augment": {"hue_shift": 0}, "epochs": 3})
    assert r.encoder_depth == 4 and len(r.decoder_channels) == 4
    assert r.augment.hue_shift == 0 and r.augment.flips == base.augment.flips
    assert base.with_overrides({}).recipe_hash() == base.recipe_hash()
    with pytest.raises(ConfigError, match="epochs"):
        base.with_overrides({"epochs": 0})


def test_mode_picks_its_default_loss_and_refuses_losses_of_another_mode():
    assert SegmentationRecipe().mode == "multiclass" and SegmentationRecipe().loss == "dice_ce"
    assert SegmentationRecipe.from_dict({"mode": "binary"}).loss == "dice_bce"
    assert SegmentationRecipe.from_dict({"mode": "instance", "loss": "focal"}).loss == "focal"
    with pytest.raises(ConfigError, match="'bce' does not fit mode 'multiclass'"):
        SegmentationRecipe.from_dict({"loss": "bce"})
    with pytest.raises(ConfigError, match="valid for binary: dice_bce, bce, focal, dice_focal"):
        SegmentationRecipe.from_dict({"mode": "binary", "loss": "dice_ce"})
    with pytest.raises(ConfigError, match="mode"):
        SegmentationRecipe.from_dict({"mode": "panoptic"})
    # Switching mode alone re-derives the loss; an explicit loss is kept and checked.
    binary = SegmentationRecipe(mode="binary", loss="bce")
    assert binary.with_overrides({"mode": "multiclass"}).loss == "dice_ce"
    assert SegmentationRecipe().with_overrides({"mode": "binary", "loss": "focal"}).loss == "focal"
    assert SegmentationRecipe(mode="binary").recipe_hash() != SegmentationRecipe().recipe_hash()


@pytest.mark.parametrize("task", ["segmentation", "detection", "classification"])
def test_an_unknown_encoder_is_refused_when_the_recipe_is_made(task):
    """Not hours later when the training builds the network: a trigger gets its 422."""
    from labelloop.runs import default_recipe

    with pytest.raises(ConfigError, match="nope-net"):
        default_recipe(task).with_overrides({"encoder": "nope-net"})
    assert default_recipe("segmentation").with_overrides({"encoder": "tu-resnet18"})


@pytest.mark.parametrize("task", ["segmentation", "detection", "classification"])
def test_fields_added_after_runs_were_recorded_default_to_none(task):
    """A later field with any other default would enter the hash of every run recorded
    before it: pipelines would retrain them and their checkpoints would stop resuming."""
    from labelloop.training.kind import get_kind

    recipe_cls = get_kind(task).recipe_cls
    later = recipe_cls.later_optional & set(recipe_cls.model_fields)
    assert later, f"{task} names no later fields"
    for name in later:
        assert recipe_cls.model_fields[name].default is None, name
        assert f'"{name}"' not in recipe_cls().canonical_json()


def test_detection_views_count_in_the_hash_only_when_set():
    from labelloop.training.detection.recipe import DetectionRecipe

    assert DetectionRecipe().views == 2  # unset: the default, which the hash leaves out
    assert DetectionRecipe(tta_views=4).views == 4
    assert DetectionRecipe(tta_views=4).recipe_hash() != DetectionRecipe().recipe_hash()
