from __future__ import annotations

import numpy as np
import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.training import harness
from labelloop.training.common import balanced_class_weights
from labelloop.training.harness import (
    FINAL_LR_FACTOR,
    DevicePlan,
    compute_threads,
    lr_factor,
    trainer_precision,
)
from labelloop.training.segmentation.data import IGNORE_INDEX, balanced_pos_weights
from labelloop.training.segmentation.system import build_loss, label_masks


def test_balanced_weights_favour_rare_classes_and_average_one_per_pixel():
    target = np.zeros((100, 100), np.uint8)
    target[:36] = 1  # 36 %
    target[99, :1] = 2  # 0.01 %
    target[98, :5] = IGNORE_INDEX  # padding: not counted
    w = balanced_class_weights([target], 4)
    counts = np.array([6394, 3600, 1, 0], float)
    freq = counts / counts.sum()
    assert (freq * w).sum() == pytest.approx(1.0, rel=1e-5)
    assert w[2] / w[1] == pytest.approx(np.sqrt(3600), rel=1e-4)
    assert w[2] > w[1] > w[0]


def test_schedule_warms_up_then_anneals_and_clamps():
    assert lr_factor(0.0, "onecycle") == pytest.approx(FINAL_LR_FACTOR)
    assert lr_factor(0.1, "onecycle") == pytest.approx(1.0)
    assert lr_factor(1.0, "onecycle") == pytest.approx(FINAL_LR_FACTOR)
    assert lr_factor(2.0, "cosine") == lr_factor(1.0, "cosine") == pytest.approx(FINAL_LR_FACTOR)
    assert lr_factor(0.0, "cosine") == pytest.approx(1.0)
    assert lr_factor(0.7, "constant") == 1.0


@pytest.mark.parametrize("name", ["dice_ce", "ce", "focal", "dice_focal"])
def test_losses_reward_correct_logits_and_skip_padding(name):
    loss = build_loss(name, [0.5, 1.0, 4.0])
    target = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    good = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 20
    bad = good.roll(1, dims=1)
    assert loss(good, target) < loss(bad, target)
    # The padded pixel's logits do not matter.
    worse_pad = good.clone()
    worse_pad[0, :, 1, 1] = torch.tensor([50.0, -50.0, -50.0])
    assert loss(worse_pad, target) == pytest.approx(loss(good, target).item(), abs=1e-5)


@pytest.mark.parametrize("name", ["dice_bce", "bce", "focal", "dice_focal"])
def test_binary_losses_reward_correct_logits_per_label_and_skip_padding(name):
    loss = build_loss(name, [2.0, 1.0], mode="binary")
    # Two labels that overlap at pixel (0, 1): multi-label, not one class per pixel.
    target = torch.tensor([[[[0, 1], [1, IGNORE_INDEX]], [[1, 1], [0, IGNORE_INDEX]]]])
    good = (target.clamp(max=1).float() * 2 - 1) * 20
    bad = -good
    assert loss(good, target) < loss(bad, target)
    half = good.clone()
    half[0, 1, 0, 0] = 0.0  # one label of one pixel undecided
    assert loss(good, target) < loss(half, target) < loss(bad, target)
    worse_pad = good.clone()
    worse_pad[0, :, 1, 1] = torch.tensor([50.0, -50.0])
    assert loss(worse_pad, target) == pytest.approx(loss(good, target).item(), abs=1e-5)


def test_positive_weight_makes_missed_foreground_cost_more():
    target = torch.tensor([[[[1, 0]]]])
    miss = torch.tensor([[[[-3.0, -3.0]]]])  # the positive pixel missed
    plain, weighted = build_loss("bce", mode="binary"), build_loss("bce", [4.0], mode="binary")
    assert weighted(miss, target) > 2 * plain(miss, target)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("bce", "multiclass"), ("dice_bce", "instance"), ("ce", "binary"), ("dice_ce", "binary")],
)
def test_losses_of_another_mode_are_refused(name, mode):
    with pytest.raises(ConfigError, match=f"{name!r} does not fit mode {mode!r}"):
        build_loss(name, mode=mode)


def test_pos_weights_are_sqrt_of_negative_to_positive_ratio():
    t = np.zeros((10, 10, 2), np.uint8)
    t[:2, :, 0] = 1  # 20 % positive
    t[9, 9, :] = IGNORE_INDEX  # padding: counted as neither
    w = balanced_pos_weights([t])
    assert w[0] == pytest.approx(np.sqrt(79 / 20)) and w[1] == 1.0  # label 1 never positive


def test_instance_label_masks_count_interior_and_contour_as_the_label():
    # Classes: 0 background, 1-2 interiors of labels 1-2, 3-4 their contours.
    target = torch.tensor([[[1, 3, 0], [2, 4, IGNORE_INDEX]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[3, 1, 0], [4, 4, 4]]]), 5)
    pred, truth, valid = label_masks(logits.permute(0, 3, 1, 2).float(), target, "instance", 2)
    assert truth[0, 0].tolist() == [[True, True, False], [False, False, False]]
    assert pred[0, 1].tolist() == [[False, False, False], [True, True, True]]
    assert valid[0, 0].tolist() == [[True, True, True], [True, True, False]]


def test_precision_maps_to_lightning_and_auto_follows_the_hardware(monkeypatch):
    assert trainer_precision("32") == "32-true"
    assert trainer_precision("bf16") == "bf16-mixed"
    monkeypatch.setattr(harness, "native_bf16", lambda device: False)
    assert trainer_precision("auto") == "32-true"
    monkeypatch.setattr(harness, "native_bf16", lambda device: True)
    assert trainer_precision("auto") == "bf16-mixed"


def test_bf16_on_a_cpu_that_emulates_it_is_kept_but_logged(monkeypatch, caplog):
    cpu = DevicePlan("cpu", 1, "auto")
    monkeypatch.setattr(harness, "native_bf16", lambda device: False)
    with caplog.at_level("WARNING", logger=harness.__name__):
        assert trainer_precision("bf16", cpu) == "bf16-mixed"
    assert "emulates bfloat16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(harness, "native_bf16", lambda device: True)
    with caplog.at_level("WARNING", logger=harness.__name__):
        assert trainer_precision("bf16", cpu) == "bf16-mixed"
        assert trainer_precision("32", cpu) == "32-true"
    assert caplog.text == ""


def test_threads_follow_omp_num_threads_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compute_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert compute_threads() >= 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert compute_threads() >= 1
