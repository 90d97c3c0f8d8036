"""Canonical domain types shared by every stage.

Every source format is converted into these shapes, and every push target converts out of
them, so stages never see a tool's own JSON. Geometry is always in pixels of the
stored image (origin top-left), which makes shapes independent of the tool that drew
them.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from labelloop.kinds import TASKS

# What a project's models learn; it decides the trainer and the scoring method. One
# member per entry of `labelloop.kinds.KINDS`.
TaskKind = StrEnum("TaskKind", [(name, name) for name in TASKS], module=__name__)


# Source metadata keys that name a patient / slide: images sharing one stay in one split.
GROUP_KEYS = ("patient_id", "patient", "slide_id", "slide", "group")


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


class Stage(StrEnum):
    """Lifecycle of a model version; only promotion moves it."""

    candidate = "candidate"
    production = "production"
    archived = "archived"


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    label: str
    # Free-form attributes kept from the source (annotator, tool-specific flags).
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Box(_Shape):
    """Axis-aligned box (x, y = top-left corner) rotated by `rotation` degrees clockwise
    around that corner, as Label Studio and CVAT draw it."""

    kind: Literal["box"] = "box"
    x: float
    y: float
    w: float
    h: float
    rotation: float = 0.0


class Polygon(_Shape):
    kind: Literal["polygon"] = "polygon"
    points: list[tuple[float, float]]


class Mask(_Shape):
    """One instance (or one class region) as COCO compressed RLE (pycocotools), column-major."""

    kind: Literal["mask"] = "mask"
    size: tuple[int, int]  # (height, width)
    counts: str


class Keypoint(_Shape):
    kind: Literal["keypoint"] = "keypoint"
    x: float
    y: float


class Ellipse(_Shape):
    kind: Literal["ellipse"] = "ellipse"
    x: float  # centre
    y: float
    rx: float
    ry: float
    rotation: float = 0.0


class Tag(_Shape):
    """A whole-image label (classification)."""

    kind: Literal["tag"] = "tag"


_S = TypeVar("_S", bound=_Shape)

Shape = Annotated[Box | Polygon | Mask | Keypoint | Ellipse | Tag, Field(discriminator="kind")]


class ShapeList(BaseModel):
    """Wrapper so a list of shapes validates / serialises in one call."""

    shapes: list[Shape]


_SHAPES = TypeAdapter(list[Shape])


def trusted_shape(cls: type[_S], **values: Any) -> _S:
    """A shape from values its reader has already checked, without pydantic's validation:
    what `model_construct` builds (same fields, in order, and defaults), for a fraction
    of its cost, paid once per shape by an ingest of millions. Missing defaults with a
    factory are not filled: the caller passes those fields. Float fields must be given
    floats (validation would convert an int; `shapes_json_text` does not)."""
    shape = _new(cls)
    _set(shape, "__dict__", {**_defaults(cls), **values})
    _set(shape, "__pydantic_fields_set__", set(values))
    _set(shape, "__pydantic_extra__", None)
    _set(shape, "__pydantic_private__", None)
    return shape


_new, _set = object.__new__, object.__setattr__  # a frozen model refuses its own setattr


@cache
def _defaults(cls: type[_Shape]) -> dict[str, Any]:
    """Every field of `cls` in order, with its default (None where there is none); read,
    never changed: `trusted_shape` copies it."""
    return {
        name: None if f.is_required() or f.default_factory else f.default
        for name, f in cls.model_fields.items()
    }


def shapes_to_json(shapes: list[Shape]) -> list[dict]:
    # Serialised as they are: wrapping them in a ShapeList validated every shape again.
    return _SHAPES.dump_python(shapes, mode="json")


def shapes_json_text(shapes: list[Shape]) -> str:
    """The shapes as compact JSON with sorted keys: the text an annotation's revision is
    hashed from and stored as. A shape's own fields are what pydantic would dump (float
    fields hold floats: validation makes them so, and `trusted_shape` callers pass floats),
    so they are dumped straight; a value json cannot take as it is (inf) goes through
    pydantic."""
    try:
        return json.dumps(
            [shape.__dict__ for shape in shapes],
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError):
        return json.dumps(shapes_to_json(shapes), sort_keys=True, separators=(",", ":"))


def shapes_from_json(data: list[dict]) -> list[Shape]:
    return ShapeList.model_validate({"shapes": data}).shapes
