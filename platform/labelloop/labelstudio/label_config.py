"""Label Studio labeling configs: what a project's XML declares, and the XML we create.

A config arrives from a server or a user's file, so it is parsed with defusedxml: entity
expansion and external references are refused instead of being resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import quoteattr

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from labelloop.errors import ConfigError, InputError
from labelloop.kinds import kind_entry

# Controls whose results carry label values, keyed by lower-case tag -> child tag of a value.
LABELED_CONTROLS = {
    "rectanglelabels": "label",
    "polygonlabels": "label",
    "brushlabels": "label",
    "keypointlabels": "label",
    "ellipselabels": "label",
    "labels": "label",
    "choices": "choice",
}
# Geometry tools without labels of their own; a generic <Labels> control names their regions.
TOOL_CONTROLS = frozenset({"rectangle", "polygon", "brush", "keypoint", "ellipse", "magicwand"})

# Canonical shape kind -> (control tag we create, its default name).
KIND_CONTROLS: dict[str, tuple[str, str]] = {
    "box": ("RectangleLabels", "box"),
    "polygon": ("PolygonLabels", "poly"),
    "mask": ("BrushLabels", "brush"),
    "keypoint": ("KeyPointLabels", "kp"),
    "ellipse": ("EllipseLabels", "ellipse"),
    "tag": ("Choices", "class"),
}
DEFAULT_CONTROLS: dict[str, str] = {kind: name for kind, (_, name) in KIND_CONTROLS.items()}
# Lower-case control tag -> the canonical shape kind its results are read as.
CONTROL_KINDS: dict[str, str] = {tag.lower(): kind for kind, (tag, _) in KIND_CONTROLS.items()}

_KNOWN_COLOURS = {"rbc": "#e53935", "wbc": "#8e24aa", "platelets": "#fb8c00", "platelet": "#fb8c00"}
_PALETTE = (
    "#1e88e5",
    "#43a047",
    "#00acc1",
    "#fdd835",
    "#6d4c41",
    "#d81b60",
    "#3949ab",
    "#7cb342",
    "#546e7a",
    "#f4511e",
)


@dataclass(frozen=True)
class ImageTag:
    name: str
    value: str  # e.g. "$image"

    @property
    def data_key(self) -> str:
        """Key of task.data holding the image reference ("$image" -> "image")."""
        return self.value[1:] if self.value.startswith("$") else self.value


@dataclass(frozen=True)
class ControlTag:
    name: str
    type: str  # tag as written in the XML, e.g. "RectangleLabels"
    to_name: str
    labels: tuple[str, ...]

    @property
    def result_type(self) -> str:
        """The `type` Label Studio writes on this control's results."""
        return self.type.lower()


@dataclass(frozen=True)
class LabelConfig:
    images: tuple[ImageTag, ...]
    controls: tuple[ControlTag, ...]

    @property
    def image_names(self) -> list[str]:
        return [i.name for i in self.images]

    @property
    def labels(self) -> list[str]:
        """Every label value declared by any control, first occurrence order."""
        return list(dict.fromkeys(v for c in self.controls for v in c.labels))

    @property
    def to_name_default(self) -> str:
        """The image object controls point at: the first Image, else the first control's."""
        if self.images:
            return self.images[0].name
        return next((c.to_name for c in self.controls if c.to_name), "image")

    def control(self, name: str) -> ControlTag | None:
        return next((c for c in self.controls if c.name == name), None)


def parse_label_config(xml: str) -> LabelConfig:
    """Image objects and the controls that produce image annotations; other tags are ignored."""
    try:
        root = safe_et.fromstring(xml)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise InputError(f"invalid labeling config XML ({exc})", file="label config") from exc
    images: list[ImageTag] = []
    controls: list[ControlTag] = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        tag = el.tag.lower()
        if tag == "image":
            images.append(ImageTag(name=_attr(el, "name"), value=el.get("value", "")))
        elif tag in LABELED_CONTROLS or tag in TOOL_CONTROLS:
            child = LABELED_CONTROLS.get(tag)
            values = [
                c.get("value", "")
                for c in el.iter()
                if child and isinstance(c.tag, str) and c.tag.lower() == child
            ]
            controls.append(
                ControlTag(
                    name=_attr(el, "name"),
                    type=el.tag,
                    to_name=el.get("toName", el.get("toname", "")),
                    labels=tuple(v for v in values if v),
                )
            )
    return LabelConfig(images=tuple(images), controls=tuple(controls))


def _attr(el: Element, key: str) -> str:
    value = el.get(key)
    if not value:
        raise InputError(f"<{el.tag}> has no {key} attribute", file="label config")
    return value


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """Stable colours: familiar ones for blood-smear classes, a palette for the rest."""
    out: dict[str, str] = {}
    unknown = 0
    for label in labels:
        colour = _KNOWN_COLOURS.get(label.lower())
        if colour is None:
            colour = _PALETTE[unknown % len(_PALETTE)]
            unknown += 1
        out[label] = colour
    return out


def label_config_xml(labels: list[str], kinds: list[str]) -> str:
    """A labeling config with one Image ("image", "$image") and one control per shape kind.

    Control names are DEFAULT_CONTROLS, so `shapes_to_results(..., controls=DEFAULT_CONTROLS)`
    writes results this config accepts.
    """
    if not labels:
        raise ConfigError("a labeling config needs at least one label")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"duplicate labels in {labels}")
    if any(not isinstance(lab, str) or not lab.strip() for lab in labels):
        raise ConfigError("labels must be non-empty strings")
    unknown = [k for k in kinds if k not in KIND_CONTROLS]
    if unknown or not kinds:
        raise ConfigError(
            f"kinds must be a non-empty subset of {sorted(KIND_CONTROLS)}, got {kinds}"
        )
    colours = label_colours(labels)
    lines = ["<View>", '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>']
    for kind in dict.fromkeys(kinds):
        tag, name = KIND_CONTROLS[kind]
        if tag == "Choices":
            lines.append(
                f'  <Choices name="{name}" toName="image" choice="single" showInline="true">'
            )
            lines += [f"    <Choice value={quoteattr(lab)}/>" for lab in labels]
        else:
            lines.append(f'  <{tag} name="{name}" toName="image">')
            lines += [
                f"    <Label value={quoteattr(lab)} background={quoteattr(colours[lab])}/>"
                for lab in labels
            ]
        lines.append(f"  </{tag}>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def task_label_config(labels: list[str], task: str, draw: str | None = None) -> str:
    """The labeling config a project of `task` is pushed with: ONE control, for the shape
    kind its annotators draw (`draw`, the project's setting, else the kind's default in
    `labelloop.kinds`), so each label appears once with its tool."""
    return label_config_xml(labels, [kind_entry(task).draw_kind(draw)])
