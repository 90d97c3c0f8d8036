"""Finding, probing and lazily loading the image files that annotation files point at.

Annotation formats name their images loosely (a bare file name, a path relative to the
annotation file, an absolute path on the annotator's machine), so each reader lists the
places its tool writes images to and this module picks the first existing file that stays
inside the dataset folder. Shared by the VOC, YOLO, LabelMe and mask-folder readers; not a
reader itself.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelloop.errors import InputError
from labelloop.imaging import DEFAULT_MAX_PIXELS
from labelloop.ingest.readers.images import IMAGE_SUFFIXES

# Lower and upper case, because exports from Windows tools keep '.JPG'.
SUFFIX_VARIANTS = tuple(sorted(IMAGE_SUFFIXES)) + tuple(s.upper() for s in sorted(IMAGE_SUFFIXES))
_PIL_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    TypeError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


# Files operating systems leave in folders: never data, never an error.
LITTER = frozenset({"thumbs.db", "desktop.ini"})


def visible(folder: Path) -> list[Path]:
    """A folder's entries, less hidden files and OS litter: what a reader must account
    for, each read or refused, so that nothing in it is passed over without a word."""
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.name.lower() not in LITTER
    )


def file_refusal(f: Path, root: Path, inside: str) -> str | None:
    """Why `f`, an entry of a folder that must hold images only (`inside` names it), is
    not an image this ingest may read: a folder, a link that leads nowhere or out of
    `root`, a file of another type; None when it is one."""
    if f.is_symlink() and not f.exists():
        return f"{f.name} is a symlink that leads nowhere (broken, or a loop)"
    if f.is_dir():
        return f"{f.name}/ is a folder inside {inside} (expected images only)"
    if not f.resolve().is_relative_to(root):
        return f"{f.name} is a symlink that points outside {root}"
    if not is_image(f) or not f.is_file():
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        return f"{f.name} is not an image (expected {suffixes})"
    return None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def unclaimed_images(
    images: Iterable[Path], base: Path, claimed: set[Path], keys: set[str], suffix: bool = False
) -> list[tuple[str, Path]]:
    """(key, image) for each of `images` that no annotation file claimed, by path or by
    key (its path under `base`, less the suffix unless `suffix`): an image a labelling
    tool saved no file for is an unlabeled image of the dataset, never nothing."""
    out = []
    for image in sorted(p for p in images if is_image(p)):
        rel = image.relative_to(base)
        key = (rel if suffix else rel.with_suffix("")).as_posix()
        if image.resolve() not in claimed and key not in keys:
            out.append((key, image))
    return out


def first_inside(candidates: Iterable[Path], roots: Iterable[Path]) -> Path | None:
    """The first candidate that is an existing file inside one of `roots` (resolved, so
    '..' and symlinks cannot leave the dataset folder)."""
    bases = [r.resolve() for r in roots]
    plain_dirs: set[str] = set()
    for cand in candidates:
        real = real_file(cand, plain_dirs)
        if real is not None and any(real.is_relative_to(b) for b in bases):
            return real
    return None


_NOT_PLAIN = ("//", "/./", "/../")  # and a path ending in '.' (".", "..", or "x.")


def real_file(path: Path | str, plain_dirs: set[str]) -> Path | None:
    """`Path(path).resolve()` if that is an existing regular file, else None. An ingest
    asks this per record, and resolving walks every component with a system call: an
    absolute path with no '.', '..' or empty component, whose file is not a link and
    whose folder is known to hold no link (`plain_dirs`, kept by the caller for one read),
    is its own resolution, which one lstat shows. Anything else is resolved in full."""
    text = os.fspath(path)
    if text[:1] == "/" and not any(part in text for part in _NOT_PLAIN) and text[-1] != ".":
        try:
            mode = os.lstat(text).st_mode
        except (OSError, ValueError):
            return None
        if stat.S_ISREG(mode):
            folder = text.rsplit("/", 1)[0]
            if folder in plain_dirs or os.path.realpath(folder) == folder:
                plain_dirs.add(folder)
                return Path(text)
        elif not stat.S_ISLNK(mode):
            return None  # a folder, a device: not an image file
    try:
        real = Path(text).resolve()
        return real if real.is_file() else None
    except (OSError, RuntimeError, ValueError):
        return None


def outside_note(candidates: Iterable[Path], roots: Iterable[Path]) -> str:
    """For a 'not found' message: the candidate that exists but resolves outside the
    dataset folder (a symlink to /etc/passwd), which was refused rather than missing."""
    bases = [r.resolve() for r in roots]
    for cand in candidates:
        try:
            if cand.is_symlink() or cand.exists():
                real = cand.resolve()
                if real.is_file() and not any(real.is_relative_to(b) for b in bases):
                    return f"; {cand} leads to {real}, outside the dataset folder: refused"
        except (OSError, RuntimeError, ValueError):
            continue
    return ""


def relative_ref(ref: str) -> str:
    """A file reference as written by a tool, made relative: backslashes from Windows tools
    become slashes, and a leading slash or drive cannot anchor it elsewhere."""
    ref = ref.replace("\\", "/").strip()
    if len(ref) > 1 and ref[1] == ":":
        ref = ref[2:]
    return ref.lstrip("/")


def relative_uri(image: Path, root: Path) -> str:
    """How a record names its image: the path below `root`, else the file name."""
    return image.relative_to(root).as_posix() if image.is_relative_to(root) else image.name


def with_suffixes(folder: Path, stem: str) -> list[Path]:
    return [folder / f"{stem}{s}" for s in SUFFIX_VARIANTS]


def image_size(path: Path, *, file: str, record: str) -> tuple[int, int]:
    """(width, height) from the image header only; the pixels are decoded later by core."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except _PIL_ERRORS as exc:
        raise InputError(
            f"image {path.name} cannot be read ({exc})", file=file, record=record
        ) from None


def bytes_size(data: bytes, *, file: str, record: str) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]), int(im.size[1])
    except _PIL_ERRORS as exc:
        raise InputError(
            f"embedded image cannot be read ({exc})", file=file, record=record
        ) from None


def open_raster(
    source: Path | bytes, *, name: str, file: str, record: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A fully loaded PIL image (masks are small PNGs, but a bomb is still refused)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(
                    f"{name} is {w}x{h} pixels, over the limit of {max_pixels}",
                    file=file,
                    record=record,
                )
            im.load()
            return im
    except InputError:
        raise
    except _PIL_ERRORS as exc:
        raise InputError(f"{name} cannot be decoded ({exc})", file=file, record=record) from None


def read_text(path: Path, *, file: str, record: str | None = None) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", file=file, record=record) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=file, record=record) from None


def finite(value: object, what: str, *, file: str, record: str) -> float:
    """A coordinate as float; text, NaN and infinities are that record's error."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} {value!r} is not a number", file=file, record=record) from None
    if not math.isfinite(out):
        raise InputError(f"{what} {value!r} is not a finite number", file=file, record=record)
    return out


def bool_mask(im: Image.Image) -> np.ndarray:
    """Any single-layer or colour raster -> bool mask of its non-zero pixels."""
    if im.mode not in ("1", "L", "P", "I", "I;16", "F"):
        im = im.convert("L")
    return np.asarray(im) > 0
