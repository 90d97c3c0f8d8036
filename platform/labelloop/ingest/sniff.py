"""Why no reader took a folder: its annotation-like files and what each one looks like.

A folder that `--format auto` can only read as images, but that holds xml / json / txt /
csv files beside them, is an export whose layout no reader recognised (an annotation file
under another name, an empty or UTF-16 file, COCO wrapped in a list...). Ingesting it as
an unlabeled pool would drop every annotation with exit 0, so the ingest is refused with
what each file looks like; `--format images` says the images alone are wanted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from labelloop.errors import InputError
from labelloop.ingest.readers._maskpairs import mask_folders

ANNOTATION_SUFFIXES = {".xml", ".json", ".txt", ".csv", ".yaml", ".yml"}
# Binary files that hold annotations in published datasets (point counts in .mat, masks
# in .npy / .h5): no reader takes them, and beside images they are never nothing.
BINARY_ANNOTATION_SUFFIXES = {".mat", ".npy", ".npz", ".h5", ".hdf5"}
# Files exports carry that describe the export, not its images (Roboflow's README.*.txt).
_NOT_ANNOTATIONS = ("readme", "license", "licence", "changelog", "notes")
SHOWN = 8  # files listed in the message; the rest are counted


def annotation_like(folder: Path) -> list[Path]:
    """Files below `folder` that could hold annotations (sorted, hidden files skipped)."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") or part.startswith("__MACOSX") for part in rel):
            continue
        suffix = p.suffix.lower()
        if (
            (suffix in ANNOTATION_SUFFIXES or suffix in BINARY_ANNOTATION_SUFFIXES)
            and not p.name.lower().startswith(_NOT_ANNOTATIONS)
            and p.is_file()
        ):
            out.append(p)
    return sorted(out)


def _head(path: Path, size: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def describe(path: Path) -> str:
    """One line on what the file holds, for a user deciding what to do with it."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        head = _head(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if path.suffix.lower() in BINARY_ANNOTATION_SUFFIXES:
        return f"binary {path.suffix.lower()} data (MATLAB, NumPy or HDF5): no reader takes it"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:200]:
        return "UTF-16 text: labelloop reads UTF-8; re-save the file as UTF-8"
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if not text:
        return "only whitespace"
    suffix = path.suffix.lower()
    if suffix == ".json" or text[:1] in "[{":
        return _describe_json(path)
    if suffix == ".xml" or text.startswith("<"):
        start = text.find("<", 1 if text.startswith("<?") else 0)
        while text.startswith(("<?", "<!"), start):
            start = text.find("<", start + 1)
        tag = text[start + 1 :].split(maxsplit=1)[0].rstrip(">/") if start >= 0 else "?"
        return f"XML with root element <{tag}>"
    first = text.splitlines()[0][:80] if text.splitlines() else ""
    return f"text starting {first!r}"


def _describe_json(path: Path) -> str:
    if path.stat().st_size > 64 * 2**20:
        return "JSON too large to describe here"
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return f"invalid JSON ({exc})"
    if isinstance(data, list):
        if not data:
            return "an empty JSON list"
        first = data[0]
        if isinstance(first, dict):
            keys = ", ".join(list(first)[:8])
            hint = ""
            if len(data) == 1 and {"images", "annotations"} & set(first):
                hint = " (a COCO file wrapped in [...]: remove the outer brackets)"
            return f"a JSON list of {len(data)} object(s); the first has keys {keys}{hint}"
        return f"a JSON list of {len(data)} {type(first).__name__}(s)"
    if isinstance(data, dict):
        return f"a JSON object with keys {', '.join(list(data)[:8]) or '(none)'}"
    return f"a JSON {type(data).__name__}"


def refuse_mask_layout(folder: Path, what: str) -> None:
    """Raise when `folder` holds images beside their masks (`mask_folders`) that a reader
    of another layout (`what`: "class folders", "an image pool") was about to take."""
    pairs = mask_folders(folder)
    if not pairs:
        return
    images, masks = pairs[0]
    holder = images.parent
    raise InputError(
        f"{masks.relative_to(folder)}/ holds files named like those in "
        f"{images.relative_to(folder)}/: masks or labels of those images, not {what}. "
        f"To read them as a mask dataset, ingest the folder that holds both ({holder}) "
        "with --format masks, which reads images/ or image/ beside masks/ or labels/ "
        "(rename the folders if need be); or pass --format folders / images to read "
        "this folder as that anyway.",
        file=str(folder),
    )


def refuse_image_pool(folder: Path, tried: list[str], class_like: Sequence[Path] = ()) -> None:
    """Raise when `folder` holds masks beside their images, annotation-like files, or
    subfolders of images that look like classes (`class_like`, two or more):
    auto-detection found no reader for them, and reading the folder as images alone
    would silently drop them."""
    refuse_mask_layout(folder, "an image pool")
    files = annotation_like(folder)
    if files:
        lines = [f"  {p.relative_to(folder)}: {describe(p)}" for p in files[:SHOWN]]
        if len(files) > SHOWN:
            lines.append(f"  ... and {len(files) - SHOWN} more")
        raise InputError(
            f"{len(files)} annotation-like file(s) here, but no format reads them "
            f"(tried {', '.join(tried)}):\n" + "\n".join(lines) + "\n"
            "Pass --format NAME to read them as that format (its error says what does not "
            "fit), or --format images to ingest the images alone as an unlabeled pool.",
            file=str(folder),
        )
    if len(class_like) >= 2:
        named = ", ".join(f"{p.relative_to(folder)}/" for p in class_like[:SHOWN])
        more = f" and {len(class_like) - SHOWN} more" if len(class_like) > SHOWN else ""
        raise InputError(
            f"{len(class_like)} subfolders hold images ({named}{more}), but not as class "
            "folders are read (each holding images only, two classes at least): pass "
            "--format folders to read each as a class (its errors say what does not "
            "fit), or --format images to ingest them all as one unlabeled pool.",
            file=str(folder),
        )
