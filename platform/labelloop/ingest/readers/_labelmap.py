"""Label maps for mask images: which pixel value or colour is which class.

A mask tool writes class masks either as colours (CVAT, VOC palette PNGs, CamVid) or as
grey values (most scripts), and names them in a small text or JSON file. This module reads
those files and turns a class mask into integer class codes; the masks reader builds
instances from the codes. Shared by the mask-folder and VOC readers; not a reader itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import read_text

# class_names.txt: labelme2voc.py (one name per line, the line index is the pixel value)
LABEL_MAP_FILES = ("labelmap.txt", "labels.json", "class_names.txt")
# Names that mean "no object here": CVAT and VOC write 'background', labelme '_background_'.
BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__", "bg"})
VOID_RGB = (224, 224, 192)  # VOC's 'difficult border' colour (palette index 255)
VOID_INDEX = 255
VOC_LABELS = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
RGB = tuple[int, int, int]


def voc_colormap(n: int = 256) -> list[RGB]:
    """The Pascal VOC palette (bit-interleaved index): CVAT's default label colours."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


@dataclass(frozen=True)
class LabelMap:
    """Pixel value -> label and colour -> label, as one label-map file declares them."""

    values: dict[int, str] = field(default_factory=dict)
    colours: dict[RGB, str] = field(default_factory=dict)
    file: str = ""

    @staticmethod
    def voc_default() -> LabelMap:
        cmap = voc_colormap(len(VOC_LABELS))
        return LabelMap(
            values=dict(enumerate(VOC_LABELS)),
            colours={cmap[i]: n for i, n in enumerate(VOC_LABELS)},
            file="the Pascal VOC default labels (no labelmap.txt)",
        )


_CVAT_LINE = re.compile(r"^([^:]*):([^:]*):([^:]*):(.*)$")
_VALUE_LINE = re.compile(r"^(\d+)\s*[:=,\s]\s*(\S.*)$")
_RGB_NAME_LINE = re.compile(r"^(\d+)\s+(\d+)\s+(\d+)\s+(\S.*)$")


def _name(names: dict, code: Any, name: str, file: str, where: str) -> None:
    """Give a pixel value or colour its label, refusing a second, different one: masks
    could not tell the two apart, and letting the later win would relabel the first's
    objects without a word."""
    if names.get(code, name) != name:
        raise InputError(
            f"label map {where}: {code} already names {names[code]!r}, not {name!r}", file=file
        )
    names[code] = name


def parse_labelmap_txt(path: Path) -> LabelMap:
    """CVAT/datumaro 'name:r,g,b:parts:actions' (an empty colour takes the VOC palette
    colour of the line's index), CamVid 'r g b name', 'value name' / 'value: name', or one
    name per line (value = line index)."""
    file = str(path)
    values: dict[int, str] = {}
    colours: dict[RGB, str] = {}
    lines = [ln.strip() for ln in read_text(path, file=file).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    cmap = voc_colormap()
    for index, line in enumerate(lines):
        where = f"line {index + 1} {line[:40]!r}"
        if m := _CVAT_LINE.match(line):
            name, colour = m.group(1).strip(), m.group(2).strip()
            rgb = _rgb(colour.split(","), file, where) if colour else cmap[index % 256]
            if not name:
                raise InputError(f"label map {where} has no name", file=file)
            _name(values, index, name, file, where)
            _name(colours, rgb, name, file, where)
        elif m := _RGB_NAME_LINE.match(line):
            _name(colours, _rgb(m.groups()[:3], file, where), m.group(4).strip(), file, where)
        elif m := _VALUE_LINE.match(line):
            _name(values, int(m.group(1)), m.group(2).strip(), file, where)
        elif ":" not in line:
            _name(values, index, line, file, where)
        else:
            raise InputError(f"cannot read label map {where}", file=file)
    if not values and not colours:
        raise InputError("label map names no labels", file=file)
    return LabelMap(values=values, colours=colours, file=file)


def parse_labels_json(path: Path) -> LabelMap:
    """A list of names (value = position), {"1": "RBC"}, {"RBC": 1}, {"RBC": [r, g, b]} or
    {"RBC": "#rrggbb"}."""
    file = str(path)
    try:
        data = json.loads(read_text(path, file=file))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"invalid JSON ({exc})", file=file) from None
    values: dict[int, str] = {}
    colours: dict[RGB, str] = {}
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        values = dict(enumerate(data))
    elif isinstance(data, dict):
        for key, val in data.items():
            where = f"label {key!r}"
            if key.strip().isdigit() and isinstance(val, str):
                _name(values, int(key), val, file, where)
            elif isinstance(val, int) and not isinstance(val, bool):
                _name(values, val, key, file, where)
            elif isinstance(val, list) and len(val) == 3:
                _name(colours, _rgb(val, file, where), key, file, where)
            elif isinstance(val, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", val):
                rgb = (int(val[1:3], 16), int(val[3:5], 16), int(val[5:7], 16))
                _name(colours, rgb, key, file, where)
            else:
                raise InputError(
                    f"label {key!r}: cannot read {val!r} as a value or colour", file=file
                )
    else:
        raise InputError("labels.json must be a list of names or an object", file=file)
    if not values and not colours:
        raise InputError("label map names no labels", file=file)
    return LabelMap(values=values, colours=colours, file=file)


def _rgb(parts: object, file: str, where: str) -> RGB:
    try:
        rgb = tuple(int(str(p).strip()) for p in parts)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"label map {where}: colour is not r,g,b", file=file) from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise InputError(f"label map {where}: colour is not r,g,b in 0..255", file=file)
    return rgb  # type: ignore[return-value]


def load_label_map(*folders: Path) -> LabelMap | None:
    for folder in folders:
        for name in LABEL_MAP_FILES:
            path = folder / name
            if path.is_file():
                return (
                    parse_labels_json(path) if name.endswith(".json") else parse_labelmap_txt(path)
                )
    return None


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]


def _unpack(code: int) -> RGB:
    return ((code >> 16) & 255, (code >> 8) & 255, code & 255)


def class_codes(
    im: Image.Image, labels: LabelMap | None, *, name: str, file: str, record: str
) -> tuple[np.ndarray, dict[int, str]]:
    """A class mask -> (int array of codes, code -> label); code 0 is background or void.

    Colour masks (RGB, or palette PNGs when the label map has colours) match the map's
    colours; single-channel masks match its values (or its colours as greys when it has
    no values). Without a map a grey value names
    itself ('255'), to be renamed with --label-map."""
    colour_map = labels is not None and bool(labels.colours)
    if colour_map and (im.mode == "P" or (im.mode in ("L", "1") and not labels.values)):
        im = im.convert("RGB")  # palette indices, or grey v as the colour (v, v, v)
    if im.mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr"):
        rgb = np.asarray(im.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        if labels is None or not labels.colours:
            if not grey:
                raise InputError(
                    f"{name} is a colour mask; a label map with colours is needed "
                    "(labelmap.txt 'name:r,g,b::' or labels.json {\"name\": [r, g, b]})",
                    file=file,
                    record=record,
                )
            return _value_codes(rgb[..., 0], labels, name=name, file=file, record=record)
        packed = _pack(rgb)
        lookup = {(r << 16) | (g << 8) | b: n for (r, g, b), n in labels.colours.items()}
        return _codes(
            packed, lookup, {0, _pack(np.array(VOID_RGB))}, labels, _unpack, name, file, record
        )
    if im.mode == "1":
        im = im.convert("L")
    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise InputError(f"{name} has unsupported pixel mode {im.mode}", file=file, record=record)
    palette = im.mode == "P"
    return _value_codes(np.asarray(im), labels, name=name, file=file, record=record, void=palette)


def _value_codes(
    arr: np.ndarray,
    labels: LabelMap | None,
    *,
    name: str,
    file: str,
    record: str,
    void: bool = False,
) -> tuple[np.ndarray, dict[int, str]]:
    """Codes of a single-channel mask. Value 255, when the map does not name it, is VOC's
    void border in palette masks (`void`) and in grey ones that hold labelled objects
    besides (DeepLab's SegmentationClassRaw); a grey mask of 0 and 255 alone is the common
    way to draw foreground, and passing it over would store the image as labelled and
    empty, so there 255 must be named."""
    arr = arr.astype(np.int64)
    present = {int(v) for v in np.unique(arr)}
    if labels is None or not labels.values:
        lookup = {v: str(v) for v in present - {0}}
        return _codes(arr, lookup, {0}, labels, str, name, file, record)
    void = void or bool(present & (set(labels.values) - {0, VOID_INDEX}))
    ignore = ({0, VOID_INDEX} if void else {0}) - set(labels.values) | {0}
    return _codes(arr, dict(labels.values), ignore, labels, str, name, file, record)


def _codes(
    arr: np.ndarray,
    lookup: dict[int, str],
    ignore: set[int],
    labels: LabelMap | None,
    show: Callable[[int], object],
    name: str,
    file: str,
    record: str,
) -> tuple[np.ndarray, dict[int, str]]:
    uniq, inverse = np.unique(arr, return_inverse=True)
    names: dict[str, int] = {}
    per_unique = np.zeros(len(uniq), dtype=np.int32)
    unknown = []
    for i, raw in enumerate(uniq.tolist()):
        label = lookup.get(raw)
        if label is None:
            if raw not in ignore:
                unknown.append(raw)
            continue
        if label.strip().lower() in BACKGROUND_NAMES:
            continue
        per_unique[i] = names.setdefault(label, len(names) + 1)
    if unknown:
        shown = ", ".join(str(show(u)) for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        src = labels.file if labels else "the label map"
        hint = ""
        if unknown == [VOID_INDEX] and show is str:
            hint = " (a mask of 0 and 255 draws objects as 255: name it, e.g. '255 cell')"
        raise InputError(
            f"{name} has pixel values not in {src}: {shown}{more}{hint}", file=file, record=record
        )
    codes = per_unique[inverse.reshape(arr.shape)]
    return codes, {code: label for label, code in names.items()}


def object_ids(im: Image.Image) -> np.ndarray:
    """Instance ids of a SegmentationObject mask; 0 is background, void is dropped."""
    if im.mode in ("P", "L", "I", "I;16"):
        arr = np.asarray(im).astype(np.int64)
        arr[arr == VOID_INDEX] = 0
        return arr
    packed = _pack(np.asarray(im.convert("RGB")))
    packed[packed == _pack(np.array(VOID_RGB))] = 0
    return packed
