"""Why no reader took a folder: its annotation-like files and what each one looks like.

A folder that `--format auto` can only read as images, but that holds xml / json / txt /
csv files beside them, is an export whose layout no reader recognised (an annotation file
under another name, an empty or UTF-16 file, COCO wrapped in a list...). Ingesting it as
an unlabeled pool would drop every annotation with exit 0, so the ingest is refused with
what each file looks like; `--format images` says the images alone are wanted."""

from __future__ import annotations

import json
from pathlib import Path

from labelloop.errors import InputError

ANNOTATION_SUFFIXES = {".xml", ".json", ".txt", ".csv", ".yaml", ".yml"}
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
        if (
            p.suffix.lower() in ANNOTATION_SUFFIXES
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


def refuse_image_pool(folder: Path, tried: list[str]) -> None:
    """Raise when `folder` holds annotation-like files: auto-detection found no reader
    for them, and reading the folder as images alone would silently drop them."""
    files = annotation_like(folder)
    if not files:
        return
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
