"""How export JSON is streamed: ijson with a read buffer sized to the file.

yajl (ijson's C backend) grows a token that spans reads by appending each read to it, so
a single string of N bytes costs O(N² / buffer): with ijson's 64 KiB default an 80 MB
base64 image in a Label Studio or COCO file took minutes. The buffer therefore grows with
the file (1/64 of its size, 64 KiB to 8 MiB): a 200 MB token parses in seconds, and the
memory held stays a small, fixed fraction of the file, never the file."""

from __future__ import annotations

import os
from pathlib import Path

MIN_BUFFER = 64 << 10
MAX_BUFFER = 8 << 20


def json_buffer(path: str | Path) -> int:
    """The ijson `buf_size` for reading `path`."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return MIN_BUFFER
    return max(MIN_BUFFER, min(MAX_BUFFER, size // 64))
