"""The task-kind registry: light to import, and every entry wired to real code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import labelloop
from labelloop.domain import TaskKind
from labelloop.errors import ConfigError
from labelloop.kinds import KINDS, TASKS, kind_entry
from labelloop.labelstudio.label_config import (
    CONTROL_KINDS,
    KIND_CONTROLS,
    parse_label_config,
    task_label_config,
)
from labelloop.scoring import available_methods
from labelloop.scoring.stage import default_method
from labelloop.selection.registry import STRATEGIES
from labelloop.training.kind import get_kind
from labelloop.training.recipe import parse_recipe, recipe_class

HEAVY = ("torch", "pytorch_lightning", "lightning", "torchvision", "timm", "albumentations")

PROBE = """
import json, sys
from labelloop.kinds import TASKS
from labelloop.domain import TaskKind
from labelloop.training.recipe import parse_recipe, recipe_class
hashes = {t: parse_recipe({}, t).recipe_hash() for t in TASKS if recipe_class(t)}
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"heavy": heavy, "tasks": [t.value for t in TaskKind], "hashes": hashes}))
"""


def test_registry_and_recipes_import_without_torch():
    # A fresh interpreter, importing the same labelloop as this test does.
    here = str(Path(labelloop.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    seen = json.loads(out.stdout)
    assert seen["heavy"] == []
    assert seen["tasks"] == list(TASKS) and len(seen["hashes"]) == len(TASKS)


def test_task_kind_enum_is_the_registry():
    assert [t.value for t in TaskKind] == list(TASKS) == [k.name for k in KINDS]
    assert TaskKind("detection") == "detection"


@pytest.mark.parametrize("task", TASKS)
def test_every_entry_names_code_that_exists(task):
    entry = kind_entry(task)
    kind = get_kind(task)
    assert kind.task == task and kind.training.task == task
    recipe = parse_recipe({}, task)
    assert type(recipe) is recipe_class(task) is kind.recipe_cls and recipe.task == task
    assert entry.default_scoring in available_methods(task)
    assert default_method(task) == kind.default_scoring == entry.default_scoring
    assert kind.primary_metric == entry.primary_metric
    assert set(entry.label_kinds) <= set(KIND_CONTROLS)
    config = parse_label_config(task_label_config(["A", "B"], task))
    # One control, so each label appears once, with the tool the task draws by default.
    assert len(config.controls) == 1 and config.labels == ["A", "B"]
    assert CONTROL_KINDS[config.controls[0].type.lower()] == entry.label_kinds[0]
    assert set(entry.label_kinds) <= entry.trainable_kinds
    # Rounds without a strategy use the kind's; it must be one users can name.
    assert entry.default_strategy in STRATEGIES


def test_an_unknown_task_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown task 'tracking'; valid tasks: segmentation"):
        kind_entry("tracking")
    with pytest.raises(ConfigError, match="unknown task 'tracking'"):
        get_kind("tracking")
    with pytest.raises(ConfigError, match="unknown task 'tracking'"):
        parse_recipe({}, "tracking")
