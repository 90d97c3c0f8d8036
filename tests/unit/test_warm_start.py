"""Warm starts: a training that begins from a saved network (the previous round's model),
as users run the loop, and simulations that step that way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.simulate import FULL, SimulationData, simulate
from labelloop.simulate.__init__ import spec_hash
from labelloop.simulate.loop import run_one
from labelloop.training.kind import get_kind
from labelloop.training.recipe import parse_recipe
from labelloop.training.segmentation.kind import KIND
from labelloop.training.segmentation.recipe import SegmentationRecipe
from tests.unit.segmentation_fixtures import make_manifest
from tests.unit.test_classification_train import _manifest, _scene
from tests.unit.test_simulate import _records, _spec

TINY = {
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [16, 16, 8],
    "image_size": 64,
    "batch_size": 4,
}


def test_an_unset_warm_start_leaves_a_recipe_hash_as_it_was():
    recipe = SegmentationRecipe(**TINY)
    data = recipe.model_dump(mode="json")
    # Fields added after runs were recorded, unset: a recorded recipe's hash is unchanged.
    for later in (
        "init_from",
        "instance_components",
        "instance_opening",
        "instance_seed_threshold",
        "instance_split_area",
        "instance_edge_share",
        "instance_rule_objects",
        "count_interval_margin",
        "full_resolution_branch",
        "skeleton_recall",
    ):
        assert data.pop(later) is None
    before = hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert recipe.recipe_hash() == before
    warm = recipe.model_copy(update={"init_from": "models/a.pt"})
    assert warm.recipe_hash() != before and warm.resume_key() != recipe.resume_key()


def _moved(start: Path, end: Path) -> float:
    """The largest change of a parameter between two saved networks (parameters only:
    batch-norm running statistics follow the data in train mode)."""
    a = torch.load(start, weights_only=True)
    b = torch.load(end, weights_only=True)
    params = [k for k in a if a[k].is_floating_point() and "running" not in k]
    return max((a[k] - b[k]).abs().max().item() for k in params)


def test_a_training_starts_from_the_given_weights(tmp_path):
    manifest, blobs = make_manifest({"train": 4, "val": 1})
    first = KIND.train(
        manifest, SegmentationRecipe(epochs=2, **TINY), blobs.__getitem__, tmp_path / "a"
    )
    blobs["models/prev.pt"] = first.weights_path.read_bytes()
    # A learning rate too small to move anything: the result is the starting point.
    recipe = SegmentationRecipe(epochs=1, lr=1e-12, init_from="models/prev.pt", **TINY)
    warm = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path / "b")
    assert _moved(first.weights_path, warm.weights_path) < 1e-4
    cold = KIND.train(
        manifest, recipe.model_copy(update={"init_from": None}), blobs.__getitem__, tmp_path / "c"
    )
    assert warm.metrics["mean_dice"] > cold.metrics["mean_dice"]
    # Weights of another network are refused, naming them.
    other = SegmentationRecipe(
        epochs=1, **{**TINY, "encoder_depth": 4, "decoder_channels": [16, 16, 8, 8]}
    )
    o = KIND.train(manifest, other, blobs.__getitem__, tmp_path / "d")
    blobs["models/other.pt"] = o.weights_path.read_bytes()
    with pytest.raises(ConfigError, match=r"warm-start weights models/other\.pt do not fit"):
        KIND.train(
            manifest,
            recipe.model_copy(update={"init_from": "models/other.pt"}),
            blobs.__getitem__,
            tmp_path / "e",
        )


@pytest.mark.parametrize(
    "task, recipe",
    [
        ("detection", {"image_size": 64, "batch_size": 4}),  # averages by default
        (
            "classification",
            {"encoder": "test_resnet", "source": "crops", "image_size": 32, "ema_decay": 0.99},
        ),
    ],
)
def test_a_warm_start_also_starts_the_weight_average(tmp_path, task, recipe):
    """With a moving average of the weights, the network the optimiser trains and the
    average that is validated and saved both start from the given weights (loading only
    the average let the trained network start from scratch, and the average follow it)."""
    kind = get_kind(task)
    rng = np.random.default_rng(0)
    manifest, blobs = _manifest([(*_scene(rng), "val" if i == 3 else "train") for i in range(4)])
    manifest["project"]["task"] = task
    recipe_cls = type(parse_recipe({"task": task}))
    # Another seed: the saved weights are far from where a fresh network starts.
    first = kind.train(
        manifest, recipe_cls(epochs=1, seed=1, **recipe), blobs.__getitem__, tmp_path / "a"
    )
    blobs["models/prev.pt"] = first.weights_path.read_bytes()
    still = recipe_cls(epochs=1, lr=1e-12, init_from="models/prev.pt", **recipe)
    warm = kind.train(manifest, still, blobs.__getitem__, tmp_path / "b")
    assert _moved(first.weights_path, warm.weights_path) < 1e-4


def test_a_warm_started_simulation_fine_tunes_each_step(tmp_path):
    data = SimulationData(_records(8, 0, "p"), _records(3, 1, "t"))
    spec = _spec(
        strategies=["uncertainty"],
        seeds=[0],
        include_full=False,
        warm_start=True,
        warm_epochs=1,
        control_fraction=0.5,
    )
    summary = simulate(spec, tmp_path / "out", data)
    (run,) = summary["runs"]
    assert [p["warm"] for p in run["points"]] == [False, True, True]
    assert all(0 <= p["metric"] <= 1 for p in run["points"])
    # Each selection held a random control slice, and the guard weighed the labelled one.
    guards = [p["guard"] for p in run["points"][:-1]]
    assert [g["control"] for g in guards] == [1, 1]
    assert all(g["decision"] == "undecided" and g["policy"] == "uncertainty" for g in guards)
    # Specs that do not ask for warm starts keep the hash their finished runs were stored under.
    assert spec_hash(_spec()) == spec_hash(_spec(warm_start=False, control_fraction=0.0))
    assert spec_hash(_spec()) != spec_hash(_spec(warm_start=True))


def test_a_warm_loops_full_reference_trains_as_long_as_the_whole_loop(tmp_path):
    """A warm loop of three steps (1 epoch, then 2 + 2 fine-tuning) has trained 5 epochs;
    its full-pool reference gets the same, where a cold loop's gets one step's."""
    data = SimulationData(_records(8, 0, "p"), _records(2, 1, "t"))
    warm = _spec(seeds=[0], warm_start=True, warm_epochs=2)
    assert warm.reference_epochs(3) == 5 and _spec().reference_epochs(3) is None
    run = run_one(warm, data, FULL, 0, tmp_path / "w")
    assert [p["epochs"] for p in run["points"]] == [5]
    # The reference depends on the loop's length only when the loop is warm.
    assert spec_hash(warm, FULL) != spec_hash(
        _spec(seeds=[0], warm_start=True, warm_epochs=2, sizes=[2, 4]), FULL
    )
    assert spec_hash(_spec(), FULL) == spec_hash(_spec(sizes=[2, 4]), FULL)
