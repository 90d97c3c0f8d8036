"""The task kinds a project can have: one entry each, importable without torch.

A kind's code is named here by dotted path and imported on first use, so reading this
table (project validation, CLI choices, Label Studio configs, scoring defaults) never loads
a deep-learning stack, and a segmentation worker never imports detection code. Everything
that branches on a project's task derives from this table: `domain.TaskKind`, the recipe
class (`training.recipe.recipe_class`), the model kind (`training.kind.get_kind`), the
scoring methods and default (`scoring`), the labeling config pushed to annotators
(`labelstudio.label_config.task_label_config`) and the metric the promotion gate compares.

Adding a kind: a subpackage `labelloop/training/<kind>/` (recipe.py with the recipe class,
kind.py with `KIND`, plus the modules those use), a module registering its scoring methods,
and one `KindEntry` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from labelloop.errors import ConfigError


@dataclass(frozen=True)
class KindEntry:
    """One task kind. Paths are "package.module" or "package.module:attribute"."""

    name: str
    recipe: str  # "module:Class" of its `training.recipe.BaseRecipe` subclass
    model: str  # "module:KIND", its `training.kind.ModelKind`
    scoring: str  # module whose import registers its scoring methods
    default_scoring: str  # a method of that module: what rounds rank by unless told
    # The selection strategy rounds use unless told, chosen on the label-efficiency
    # benchmarks (BENCHMARKS.md, "Label efficiency").
    default_strategy: str
    # A key of the kind's evaluation, higher is better: what the promotion gate compares.
    primary_metric: str
    # Canonical shape kinds annotators may draw for it. The labeling config has ONE control
    # (the project's `draw` setting, else the first): several controls with the same labels
    # show annotators the same label row several times without saying which tool each is.
    label_kinds: tuple[str, ...]
    # Shape kinds its training reads; a sync refuses others (they would be dropped silently).
    trainable_kinds: frozenset[str]
    # Shape kinds that are annotated objects in a true count (`objects.object_counts`,
    # which does not count a box or point again where it marks an outlined cell).
    counted_kinds: tuple[str, ...]

    def draw_kind(self, choice: str | None = None) -> str:
        """The shape kind a project's annotators draw: `choice` (a project setting), else
        the kind's default; ConfigError naming the valid ones."""
        if choice is None:
            return self.label_kinds[0]
        if choice not in self.label_kinds:
            raise ConfigError(
                f"a {self.name} project draws {' or '.join(self.label_kinds)}, not {choice!r}"
            )
        return choice


KINDS: tuple[KindEntry, ...] = (
    KindEntry(
        name="segmentation",
        recipe="labelloop.training.segmentation.recipe:SegmentationRecipe",
        model="labelloop.training.segmentation.kind:KIND",
        scoring="labelloop.scoring.segmentation",
        default_scoring="entropy_mean",
        # A default that does no harm: on ISBI's near-identical slices every
        # uncertainty-first strategy fell below random (hybrid by 1.4 and 1.7 paired sd on
        # two machines, 0 of 5 seeds ahead both times); a draw weighted by uncertainty^4
        # was level there (0.0 sd) and ahead of random on the heterogeneous smears by
        # about half of hybrid's margin (+0.004 against +0.009 AUC on one machine, both
        # within the seeds' spread; hybrid's 2.3 sd of another machine did not repeat).
        default_strategy="power",
        primary_metric="mean_dice",
        label_kinds=("mask", "polygon"),  # brush unless the project says polygons
        # A box says where a cell is, not which pixels are it: never a segmentation target.
        trainable_kinds=frozenset({"mask", "polygon", "ellipse"}),
        counted_kinds=("mask", "polygon", "ellipse", "box", "keypoint"),
    ),
    KindEntry(
        name="detection",
        recipe="labelloop.training.detection.recipe:DetectionRecipe",
        model="labelloop.training.detection.kind:KIND",
        scoring="labelloop.scoring.detection",
        # The least confident kept box decides: one doubtful cell is worth an annotator's look.
        default_scoring="least_confidence_max",
        # BCCD: plain uncertainty sends dense RBC clumps and fell below random; boosting
        # images with predicted rare classes (WBC, platelets) beat random (warm loops:
        # level over the curve, ahead in every seed once the detector has 50 labels).
        default_strategy="class_balance",
        primary_metric="map50",
        label_kinds=("box",),
        # Any shape with an extent gives a box; a keypoint has none.
        trainable_kinds=frozenset({"box", "polygon", "mask", "ellipse"}),
        counted_kinds=("box", "polygon", "ellipse", "mask", "keypoint"),
    ),
    KindEntry(
        name="classification",
        recipe="labelloop.training.classification.recipe:ClassificationRecipe",
        model="labelloop.training.classification.kind:KIND",
        scoring="labelloop.scoring.classification",
        default_scoring="entropy",
        # No label-efficiency pool is measured for this kind yet: plain uncertainty.
        default_strategy="uncertainty",
        # Macro-F1, not accuracy: a model that calls every cell an RBC is 86% accurate on BCCD.
        primary_metric="macro_f1",
        label_kinds=("tag",),
        # An image's class, or one crop per annotated region.
        trainable_kinds=frozenset({"tag", "box", "polygon", "mask", "ellipse"}),
        counted_kinds=("tag", "box", "polygon", "ellipse", "mask"),
    ),
)

_BY_NAME: dict[str, KindEntry] = {k.name: k for k in KINDS}
TASKS: tuple[str, ...] = tuple(_BY_NAME)
# The task a recipe without one is read as.
DEFAULT_TASK = TASKS[0]


def kind_entry(task: str) -> KindEntry:
    """The entry of `task`; ConfigError listing the valid tasks for an unknown one."""
    entry = _BY_NAME.get(task)
    if entry is None:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return entry


def load(path: str) -> Any:
    """The module, or the module's attribute, that a "module[:attribute]" path names."""
    module, _, attr = path.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded
