"""Where CVAT and COCO exports keep the images their annotation file names.

Both name an image relative to a folder of the tool's choosing (`images/`,
`images/<subset>/`, the annotation file's folder...), and some write absolute paths from
the annotator's machine, so the lookup tries the subset folder, the name as written and
its base name under each base in turn. Nothing outside the bases is ever followed
(`_imagefiles.first_inside`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import first_inside, outside_note, relative_ref


def relative_names(name: str, subset: str | None = None) -> list[str]:
    rel = relative_ref(name)
    base = PurePosixPath(rel).name
    names = [f"{subset}/{rel}", rel, f"{subset}/{base}", base] if subset else [rel, base]
    return [n for n in dict.fromkeys(names) if n and n != subset]


class ImageFinder:
    """Looks names up under fixed bases (resolved once: a reader asks once per image)."""

    def __init__(self, bases: Sequence[Path]):
        self.roots = list(dict.fromkeys(b.resolve() for b in bases))

    def find(self, name: str, *, subset: str | None = None, file: str, record: str) -> Path:
        """The first existing file for `name`; InputError naming where it looked."""
        if not name.strip() or "\x00" in name:
            raise InputError(
                f"image name {name!r} is not a usable file name", file=file, record=record
            )
        for root in self.roots:
            found = first_inside((root / rel for rel in relative_names(name, subset)), [root])
            if found is not None:
                return found
        where = ", ".join(str(r) for r in self.roots)
        tried = [root / rel for root in self.roots for rel in relative_names(name, subset)]
        raise InputError(
            f"image file {name!r} not found (looked in {where}){outside_note(tried, self.roots)}",
            file=file,
            record=record,
        )
