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

import orjson
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
    hashed from and stored as, so it must never change for the same shapes. A shape's own
    fields are what pydantic would dump (float fields hold floats: validation makes them
    so, and `trusted_shape` callers pass floats), so they are dumped straight, by orjson
    where its text is certainly json's (`_json_text`), by json otherwise; a value json
    cannot take as it is (inf) goes through pydantic."""
    fields = [shape.__dict__ for shape in shapes]
    try:
        text = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a type orjson leaves to json (a numpy float, an int over 64 bits)
        pass
    else:
        if text.isascii() and not any(part in text for part in _NOT_LIKE_JSON):
            return text.decode()
    try:
        return _json_text(fields, allow_nan=False)
    except (TypeError, ValueError):
        return _json_text(shapes_to_json(shapes))


def _json_text(value: Any, **options: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), **options)


# Where orjson's text may differ from `_json_text`'s (substring tests: several times
# faster than a regular expression here): DEL (json escapes it; every other ASCII
# character, escaped or not, both write alike), a float below 1e-4 (json: "1e-05",
# "2.5e-07"; orjson: "0.00001", "2.5e-7"; from 1e16 up both write "1e+16"), null (orjson's
# NaN and inf; no shape field holds None). Non-ASCII text is checked apart.
_NOT_LIKE_JSON = (b"\x7f", b"e-", b"0.0000", b"null")


def shapes_from_json(data: list[dict]) -> list[Shape]:
    return ShapeList.model_validate({"shapes": data}).shapes
