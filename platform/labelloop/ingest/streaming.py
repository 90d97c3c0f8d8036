"""How export JSON is streamed: ijson with a read buffer sized to the file.

yajl (ijson's C backend) grows a token that spans reads by appending each read to it, so
a single string of N bytes costs O(N² / buffer): with ijson's 64 KiB default an 80 MB
base64 image in a Label Studio or COCO file took minutes. The buffer therefore grows with
the file (1/64 of its size, 64 KiB to 8 MiB): a 200 MB token parses in seconds, and the
memory held stays a small, fixed fraction of the file, never the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from labelloop.errors import InputError

MIN_BUFFER = 64 << 10
MAX_BUFFER = 8 << 20


def json_buffer(path: str | Path) -> int:
    """The ijson `buf_size` for reading `path`."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return MIN_BUFFER
    return max(MIN_BUFFER, min(MAX_BUFFER, size // 64))


# Annotation exports nest about ten levels deep. ijson builds a prefix string per level
# ("item.item.item..."), so a document nested d deep costs O(d²) memory: a 200 KB file of
# 100,000 brackets took over 24 GB and was killed without a word. Deeper than this is
# refused before ijson reads a byte.
MAX_DEPTH = 256
_SCAN_CHUNK = 1 << 18  # its index arrays stay well under 2 MB


def too_deep(limit: int, where: str, file: str) -> InputError:
    return InputError(
        f"JSON nested deeper than {limit} levels ({where}): not an annotation export, or a "
        "damaged one",
        file=file,
    )


def check_nesting(path: str | Path, *, file: str, limit: int = MAX_DEPTH) -> None:
    """Raise InputError when the JSON at `path` nests arrays and objects deeper than
    `limit`. One pass with numpy over the bytes that matter (quotes, backslashes,
    brackets): brackets inside strings, escaped quotes included, do not count. Run before
    any ijson parse of the file, format detection's too: yajl parses a whole read buffer
    before it yields, so a guard on its events comes too late. A file found shallow is
    remembered (by path, size and modification time) and not read again."""
    stat = os.stat(path)
    seen = (str(path), stat.st_size, stat.st_mtime_ns, limit)
    if seen in _CHECKED:  # format detection checked it, and the reader asks again
        return
    depth, in_string, slashes, offset = 0, False, 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            a = np.frombuffer(chunk, np.uint8)
            at = np.flatnonzero(_SPECIAL[a])
            if at.size:
                depth, in_string, slashes, deep = _scan(a[at], at, depth, in_string, slashes, limit)
                if deep is not None:
                    raise too_deep(limit, f"at byte {offset + deep}", file)
                if depth < 0:  # more closed than opened: not JSON, the parser will say so
                    return
                if at[-1] != len(a) - 1 or a[-1] != 92:
                    slashes = 0  # the chunk does not end in a backslash run
            else:
                slashes = 0
            offset += len(a)
    if len(_CHECKED) > 1000:
        _CHECKED.clear()
    _CHECKED.add(seen)


_CHECKED: set[tuple[str, int, int, int]] = set()


_SPECIAL = np.zeros(256, bool)  # the bytes that matter: quote, backslash, brackets
_SPECIAL[np.frombuffer(b'"\\[]{}', np.uint8)] = True
_STEP = np.zeros(256, np.int8)  # +1 opens an array or object, -1 closes one
_STEP[np.frombuffer(b"[{", np.uint8)] = 1
_STEP[np.frombuffer(b"]}", np.uint8)] = -1


def _scan(
    chars: np.ndarray, at: np.ndarray, depth: int, in_string: bool, slashes: int, limit: int
) -> tuple[int, bool, int, int | None]:
    """One chunk's special bytes (`chars` at byte offsets `at`): the depth, string state
    and trailing backslash run after it, and the chunk's byte where the depth passes
    `limit` (None: it does not). A depth below 0 says more brackets closed than opened."""
    n = len(chars)
    backslash = chars == 92
    quote = chars == 34
    if backslash.any():
        idx = np.arange(n)
        adjacent = np.r_[False, at[1:] == at[:-1] + 1]
        continues = backslash & adjacent & np.r_[False, backslash[:-1]]
        start = np.maximum.accumulate(np.where(backslash & ~continues, idx, -1))
        # Backslashes right before each byte: the run ending at the previous special
        # byte, plus the run carried from the last chunk where that run began at byte 0.
        prev = np.maximum(idx - 1, 0)
        run = np.where(np.r_[False, backslash[:-1]] & adjacent, prev - start[prev] + 1, 0)
        from_chunk_start = np.where(run > 0, at[start[prev]] == 0, at == 0)
        run = run + np.where(from_chunk_start, slashes, 0)
        quote &= run % 2 == 0  # an escaped quote neither opens nor closes a string
    elif slashes % 2 and at[0] == 0:
        quote[0] = False  # escaped by the backslashes that ended the last chunk
    inside = (np.cumsum(quote, dtype=np.int32) + in_string) % 2 == 1
    step = _STEP[chars]
    step[inside] = 0
    levels = depth + np.cumsum(step, dtype=np.int64)
    if levels.max() > limit:
        return depth, False, 0, int(at[np.argmax(levels > limit)])
    if levels.min() < 0:
        return -1, False, 0, None
    tail = 0
    if backslash[-1]:
        tail = n - int(start[-1]) + (slashes if at[start[-1]] == 0 else 0)
    return int(levels[-1]), bool(inside[-1]), tail, None
