"""Content-addressed blob store for images, checkpoints and model artifacts.

Keys are `<prefix>/<sha256[:2]>/<sha256><suffix>`, so the same bytes are stored once
and a key says what it holds. Any fsspec URL works as the root (a local folder by
default, `s3://bucket/prefix` in production).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class BlobStore:
    """Write-once store; `put` is idempotent because the key derives from the content."""

    def __init__(self, root: str | Path):
        self.root = str(root).rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self.fs.makedirs(self._base, exist_ok=True)

    def _path(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return f"{self._base}/{key}"

    @staticmethod
    def key_for(sha256: str, prefix: str, suffix: str = "") -> str:
        return f"{prefix}/{sha256[:2]}/{sha256}{suffix}"

    def put_bytes(self, data: bytes, prefix: str = "blobs", suffix: str = "") -> tuple[str, str]:
        """Store `data`; returns (key, sha256). Writes through a temp name so readers never
        see a partial blob."""
        digest = sha256_bytes(data)
        key = self.key_for(digest, prefix, suffix)
        path = self._path(key)
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        return key, digest

    def put_file(self, src: str | Path, prefix: str = "blobs", suffix: str = "") -> tuple[str, str]:
        return self.put_bytes(Path(src).read_bytes(), prefix, suffix)

    def get_bytes(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as f:
            return f.read()

    def iter_bytes(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Read a blob in chunks (downloads of model artifacts stream, never load whole)."""
        with self.fs.open(self._path(key), "rb") as f:
            while block := f.read(chunk):
                yield block

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def delete(self, key: str) -> None:
        """Remove a blob that nothing refers to any more (superseded checkpoints); a missing
        one is not an error, so a retried clean-up is harmless."""
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for the blob when the store is local (for tools that need one)."""
        if self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol:
            return Path(self._path(key))
        return None

    def url(self, key: str) -> str:
        return f"{self.root}/{key}"
