"""Pascal VOC XML: labelImg folders and CVAT's 'Pascal VOC 1.1' export.

One XML per image (`<annotation>` with `<filename>`, `<size>` and `<object>` boxes).
A VOC dataset folder holds Annotations/, JPEGImages/, ImageSets/Main/<subset>.txt and,
from CVAT, SegmentationClass/ + SegmentationObject/ + labelmap.txt; labelImg just writes
XML files next to the images. Box corners are read as continuous pixel coordinates
(x = xmin, w = xmax - xmin), as labelImg writes them and CVAT/datumaro read them back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from labelloop.domain import Box, Polygon, Shape
from labelloop.errors import InputError
from labelloop.ingest.readers import masks
from labelloop.ingest.readers._imagefiles import (
    finite,
    first_inside,
    image_size,
    outside_note,
    relative_ref,
    relative_uri,
    unclaimed_images,
    with_suffixes,
)
from labelloop.ingest.readers.splits import split_folders, split_meta
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    default_source,
    error_record,
    image_record,
)

_VOC_ROOT = re.compile(rb"<annotation[\s>]")
_FLAGS = ("difficult", "truncated", "occluded")


def _is_voc_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return bool(_VOC_ROOT.search(head)) and b"<annotations" not in head


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".xml" and _is_voc_xml(path)
    if not path.is_dir():
        return False
    ann = path / "Annotations"
    if ann.is_dir():
        xml = next(ann.rglob("*.xml"), None)
        return xml is not None and _is_voc_xml(xml)
    return any(_is_voc_xml(x) for x in _loose_xml(path)[:5])


def _loose_xml(root: Path) -> list[Path]:
    """XML beside the images: labelImg's folder, or Roboflow's train/ valid/ test/."""
    files = sorted(root.glob("*.xml"))
    for sub in split_folders(root):
        files += sorted(sub.glob("*.xml"))
    return files


@dataclass
class _Layout:
    root: Path  # the dataset folder (the parent of Annotations/ when that was given)
    xml_root: Path  # image ids are XML paths relative to this, less the suffix
    xml_files: list[Path]
    ann_dir: Path | None
    image_root: Path
    subsets: dict[str, str] = field(default_factory=dict)
    seg: masks.MaskLayout | None = None


def _layout(path: Path, opts: ReadOptions) -> _Layout:
    if path.is_file():
        root = path.parent.parent if path.parent.name == "Annotations" else path.parent
        files = [path]
    else:
        root = path.parent if path.name == "Annotations" else path
        files = []
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        ann_dir = None
    if not files:
        files = sorted(ann_dir.rglob("*.xml")) if ann_dir else _loose_xml(root)
    seg = masks.find_layout(root) if masks.segmentation_dirs(root) else None
    subsets = masks.image_set_subsets(root, "Segmentation")
    subsets.update(masks.image_set_subsets(root, "Main"))
    return _Layout(
        root=root.resolve(),
        xml_root=path.parent if path.is_file() else (ann_dir or root),
        xml_files=files,
        ann_dir=ann_dir,
        image_root=(opts.image_root or root).resolve(),
        subsets=subsets,
        seg=seg,
    )


def read_voc(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per XML file, then one per segmentation mask without XML, then one
    (unlabeled) per image that no annotation claimed: in JPEGImages/ (or images/ beside
    Annotations/), or beside the XML files of a labelImg folder."""
    lay = _layout(path, opts)
    source = opts.source or default_source("voc", lay.root)
    if not lay.xml_files and lay.seg is None:
        raise InputError("no Pascal VOC XML files found", file=str(path))
    seen: set[str] = set()
    used: set[Path] = set()
    mask_files = lay.seg.mask_files() if lay.seg else {}
    for xml in lay.xml_files:
        image_id = xml.relative_to(lay.xml_root).with_suffix("").as_posix()
        seen.add(image_id)
        name = f"image {image_id}"
        try:
            rec = _xml_record(xml, image_id, name, lay, source, mask_files.get(image_id))
            used.add(Path(rec.meta["image_path"]))
            yield rec
        except InputError as exc:
            yield error_record(exc, source=source, external_id=image_id, file=str(xml), name=name)
    if lay.seg is not None:
        yield from lay.seg.unread_records(mask_files, source)
    for image_id in sorted(set(mask_files) - seen):
        seen.add(image_id)
        name = f"image {image_id}"
        mask = mask_files[image_id]
        try:
            image = _find_image(lay, None, image_id, None, str(mask), name)
            used.add(image)
            yield _record(lay, image_id, name, image, str(mask), source, [], mask)
        except InputError as exc:
            yield error_record(exc, source=source, external_id=image_id, file=str(mask), name=name)
    folder, images = _image_folder(path, lay)
    if folder is not None:
        for image_id, image in unclaimed_images(images, folder, used, seen):
            name = f"image {image_id}"
            found = first_inside([image], [lay.root, lay.image_root])
            if found is None:
                err = InputError("image lies outside the dataset folder", file=str(image))
                yield error_record(
                    err, source=source, external_id=image_id, file=str(image), name=name
                )
                continue
            yield _record(lay, image_id, name, found, str(image), source, None, None)


def _image_folder(path: Path, lay: _Layout) -> tuple[Path | None, list[Path]]:
    """Where the dataset's images are, to find those no XML claimed, and the files there:
    JPEGImages/ (or images/ beside Annotations/) throughout, or the folders of a labelImg
    folder's XML. None for a single XML file given on its own."""
    jpeg = masks.jpeg_dir(lay.root)
    if jpeg is not None:
        return jpeg, list(jpeg.rglob("*"))
    if path.is_file():
        return None, []
    if lay.ann_dir is not None:
        found = next((lay.root / d for d in ("images", "Images") if (lay.root / d).is_dir()), None)
        return found, list(found.rglob("*")) if found else []
    folders = [lay.root, *split_folders(lay.root)]
    return lay.root, [p for f in folders for p in f.iterdir()]


@dataclass
class _VocFile:
    filename: str = ""
    width: int = 0
    height: int = 0
    objects: list[Element] = field(default_factory=list)


def _parse(xml: Path, name: str) -> _VocFile:
    """Streamed with iterparse; only direct children of <annotation> are kept."""
    out = _VocFile()
    file = str(xml)
    depth = 0
    try:
        for event, el in safe_et.iterparse(str(xml), events=("start", "end")):
            if event == "start":
                depth += 1
                if depth == 1 and el.tag != "annotation":
                    raise InputError(
                        f"not a Pascal VOC annotation (root element <{el.tag}>)",
                        file=file,
                        record=name,
                    )
                continue
            depth -= 1
            if depth != 1:
                continue
            if el.tag == "filename":
                out.filename = (el.text or "").strip()
            elif el.tag == "size":
                out.width = _dim(el, "width", file, name)
                out.height = _dim(el, "height", file, name)
            elif el.tag == "object":
                out.objects.append(el)
    except ParseError as exc:
        raise InputError(f"invalid XML ({exc})", file=file, record=name) from None
    except DefusedXmlException as exc:
        raise InputError(f"XML refused ({exc!r})", file=file, record=name) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=file, record=name) from None
    return out


def _dim(size: Element, tag: str, file: str, name: str) -> int:
    """A <size> entry; 0 or missing means unknown (labelImg writes 0 for some images)."""
    text = (size.findtext(tag) or "").strip()
    if not text:
        return 0
    value = finite(text, f"<size><{tag}>", file=file, record=name)
    if value < 0 or value != int(value):
        raise InputError(f"<size><{tag}> {text!r} is not a pixel count", file=file, record=name)
    return int(value)


def _object_shape(obj: Element, index: int, file: str, name: str, notes: list[str]) -> Shape:
    """The object's box (or MIT LabelMe polygon). What else it holds is not read, and
    said in `notes`: its <part>s (VOC's person layout: head, hands), and a polygon
    beside its box."""
    label = (obj.findtext("name") or "").strip()
    where = f"{name} / object {index}" + (f" ({label})" if label else "")
    if not label:
        raise InputError("object has no <name>", file=file, record=where)
    box = obj.find("bndbox")
    poly = obj.find("polygon")
    if parts := obj.findall("part"):
        notes.append(f"{where}: {len(parts)} <part>(s) left out; the object's own box is read")
    if box is None and poly is not None:
        return _labelme_polygon(poly, label, file, where)
    if poly is not None:
        notes.append(f"{where}: its <polygon> is left out; its <bndbox> is read")
    if box is None:
        raise InputError(
            "object has no <bndbox> (nor a LabelMe <polygon>)", file=file, record=where
        )
    xmin, ymin, xmax, ymax = (
        finite((box.findtext(k) or "").strip(), k, file=file, record=where)
        for k in ("xmin", "ymin", "xmax", "ymax")
    )
    for lo, hi, a, b in ((xmin, xmax, "xmin", "xmax"), (ymin, ymax, "ymin", "ymax")):
        if hi <= lo:
            raise InputError(f"box has {a} {lo:g} >= {b} {hi:g} (no area)", file=file, record=where)
    attrs: dict[str, str | int | float | bool] = {}
    for flag in _FLAGS:
        word = (obj.findtext(flag) or "").strip()
        if word.lower() in ("1", "true"):
            attrs[flag] = True
        elif word.lower() not in ("", "0", "false"):  # not read as false: refused
            raise InputError(f"<{flag}> {word!r} is not 0/1 or true/false", file=file, record=where)
    for attr in obj.iterfind("attributes/attribute"):
        key, value = (attr.findtext("name") or "").strip(), (attr.findtext("value") or "").strip()
        if key:
            attrs[key] = {"true": True, "false": False}.get(value.lower(), value)
    return Box(label=label, x=xmin, y=ymin, w=xmax - xmin, h=ymax - ymin, attributes=attrs)


def _labelme_polygon(poly: Element, label: str, file: str, where: str) -> Shape:
    """MIT LabelMe XML: <polygon><pt><x/><y/></pt>...</polygon> in pixels."""
    pts = [
        (
            finite((pt.findtext("x") or "").strip(), "x", file=file, record=where),
            finite((pt.findtext("y") or "").strip(), "y", file=file, record=where),
        )
        for pt in poly.iterfind("pt")
    ]
    if len(pts) < 3:
        raise InputError(f"polygon has {len(pts)} points, needs 3", file=file, record=where)
    return Polygon(label=label, points=pts)


def _find_image(
    lay: _Layout, filename: str | None, image_id: str, xml: Path | None, file: str, name: str
) -> Path:
    """<filename> under JPEGImages/, the XML's folder or the image root; then the XML
    stem with any image suffix (tools rename files without rewriting <filename>)."""
    jpeg = masks.jpeg_dir(lay.root)
    folders = [masks.jpeg_dir(lay.image_root) or lay.image_root / "JPEGImages", lay.image_root]
    if lay.root != lay.image_root and jpeg is not None:
        folders[1:1] = [jpeg]
    if xml is not None:
        folders.insert(1, xml.parent)
    folders += [lay.root / d for d in ("Images", "images") if (lay.root / d).is_dir()]  # LabelMe
    roots = [lay.root, lay.image_root]
    cands: list[Path] = []
    if filename:
        rel = relative_ref(filename)
        cands += [f / rel for f in folders]
        cands += [f / Path(rel).name for f in folders]
    cands += [p for f in folders for p in with_suffixes(f, image_id)]
    if xml is not None:
        cands += with_suffixes(xml.parent, xml.stem)
    found = first_inside(cands, roots)
    if found is None:
        looked = ", ".join(dict.fromkeys(str(f) for f in folders))
        what = f"image file {filename!r}" if filename else f"an image for {image_id}"
        raise InputError(
            f"{what} not found (looked in {looked}, also for {image_id}.<jpg|png|...>)"
            + outside_note(cands, roots),
            file=file,
            record=name,
        )
    return found


def _xml_record(
    xml: Path, image_id: str, name: str, lay: _Layout, source: str, mask: Path | None
) -> SourceRecord:
    file = str(xml)
    voc = _parse(xml, name)
    notes: list[str] = []
    shapes = [
        _object_shape(o, i, file, name, notes)
        for i, o in enumerate(voc.objects, start=1)
        if (o.findtext("deleted") or "").strip() != "1"  # MIT LabelMe keeps deleted objects
    ]
    image = _find_image(lay, voc.filename, image_id, xml, file, name)
    rec = _record(lay, image_id, name, image, file, source, shapes, mask)
    rec.warnings.extend(f"{file}: {note}" for note in notes)
    if voc.width and voc.height:
        actual = image_size(image, file=file, record=name)
        if actual != (voc.width, voc.height):
            raise InputError(
                f"<size> says {voc.width}x{voc.height} but image {image.name} is "
                f"{actual[0]}x{actual[1]}; the boxes were drawn on another image",
                file=file,
                record=name,
            )
    if voc.filename and Path(relative_ref(voc.filename)).name != image.name:
        rec.meta["xml_filename"] = voc.filename
    return rec


def _record(
    lay: _Layout,
    image_id: str,
    name: str,
    image: Path,
    file: str,
    source: str,
    shapes: list[Shape] | None,
    mask: Path | None,
) -> SourceRecord:
    """`shapes` None means no annotation at all (an unlabeled image)."""
    if mask is not None and lay.seg is not None:
        size = image_size(image, file=file, record=name)
        obj = lay.seg.object_file(image_id)
        shapes = [
            *(shapes or []),
            *masks.mask_file_shapes(mask, obj, lay.seg.labels, size, record=name),
        ]
    meta = {"subset": lay.subsets[image_id]} if image_id in lay.subsets else {}
    if lay.ann_dir is None and "/" in image_id:  # train/x.xml of a Roboflow download
        meta.update(split_meta(image_id.split("/", 1)[0]))
    return image_record(
        source=source,
        external_id=image_id,
        uri=relative_uri(image, lay.image_root),
        file=file,
        name=name,
        image=image,
        annotations=[] if shapes is None else [RecordAnnotation(external_id="voc", shapes=shapes)],
        meta=meta,
    )


FORMAT = Format(
    "voc",
    read_voc,
    detect,
    "Pascal VOC XML (labelImg, CVAT 'Pascal VOC 1.1'): defusedxml iterparse; boxes, "
    "ImageSets subsets, CVAT SegmentationClass/SegmentationObject masks via the masks reader",
)
