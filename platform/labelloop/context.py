"""What every stage needs at run time, built once per process from Settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from labelloop.config import Settings, get_settings
from labelloop.db.session import Database
from labelloop.storage import BlobStore


@dataclass
class Context:
    settings: Settings = field(default_factory=get_settings)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.settings.blob_url)

    def workdir(self, *parts: str) -> Path:
        path = self.settings.data_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()


_CONTEXT: Context | None = None


def get_context() -> Context:
    """Process-wide context (workers, API); tests and the CLI may build their own."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = Context()
    return _CONTEXT


def set_context(ctx: Context | None) -> None:
    global _CONTEXT
    _CONTEXT = ctx
