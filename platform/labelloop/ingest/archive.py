"""Safe extraction of a .zip export (as Label Studio and CVAT produce them) before reading.

Every member is checked before anything is written: absolute paths, `..` components and
symlinks are refused (zip-slip), and the declared uncompressed size and count are capped
(zip bombs), so a hostile archive fails with a message instead of writing outside the
temporary folder or filling the disk."""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from labelloop.errors import InputError

MAX_TOTAL_BYTES = 20 * 2**30
MAX_MEMBERS = 2_000_000
MAX_RATIO = 200  # uncompressed / compressed, per member and for the whole archive
# Below these sizes a high ratio is harmless (a small JSON of repeated keys compresses
# well); above them it is a bomb, whether in one member or spread over many (42 members
# of 49 MiB zeros are 2 GiB from 2.5 MB).
RATIO_MEMBER_BYTES = 8 * 2**20
RATIO_TOTAL_BYTES = 64 * 2**20


def _check_member(info: zipfile.ZipInfo, archive: str) -> None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"archive member {name!r} has an absolute path", file=archive)
    if ".." in pure.parts:
        raise InputError(f"archive member {name!r} escapes the archive (..)", file=archive)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InputError(f"archive member {name!r} is a symbolic link", file=archive)
    if (
        info.compress_size
        and info.file_size / info.compress_size > MAX_RATIO
        and (info.file_size > RATIO_MEMBER_BYTES)
    ):
        raise InputError(
            f"archive member {name!r} expands {info.file_size / info.compress_size:.0f}x "
            "(a zip bomb?)",
            file=archive,
        )


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Extract `archive` into `dest`; return the folder to read (the single top-level folder
    when the archive has one, as exports usually do)."""
    name = str(archive)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"not a readable zip archive ({exc})", file=name) from None
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise InputError(f"archive has {len(members)} members, over {max_members}", file=name)
        total = packed = 0
        for info in members:
            _check_member(info, name)
            total += info.file_size
            packed += info.compress_size
        if total > max_total_bytes:
            raise InputError(
                f"archive expands to {total} bytes, over the limit of {max_total_bytes}", file=name
            )
        if total > RATIO_TOTAL_BYTES and total > MAX_RATIO * max(packed, 1):
            raise InputError(
                f"archive expands {total / max(packed, 1):.0f}x to {total / 2**20:.0f} MiB "
                f"over {len(members)} members (a zip bomb?)",
                file=name,
            )
        root = dest.resolve()
        for info in members:
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):  # belt and braces after the name checks
                raise InputError(f"archive member {info.filename!r} escapes the archive", file=name)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size:  # lying header
                            raise InputError(
                                f"archive member {info.filename!r} is larger than declared",
                                file=name,
                            )
                        out.write(chunk)
            except (
                zipfile.BadZipFile,
                EOFError,
                zlib.error,
                RuntimeError,
                NotImplementedError,
                OSError,
            ) as exc:  # encrypted, deflate64, clashes
                raise InputError(
                    f"archive member {info.filename!r} cannot be extracted ({exc})", file=name
                ) from None
    entries = [p for p in dest.iterdir() if not p.name.startswith("__MACOSX")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
