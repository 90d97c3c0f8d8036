"""What a reader yields: one image as a source knows it, with its annotations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labelloop.domain import Shape
from labelloop.errors import InputError


@dataclass
class RecordAnnotation:
    external_id: str
    shapes: list[Shape]
    annotator: str | None = None
    ground_truth: bool = False
    updated_at: str | None = None
    cancelled: bool = False


@dataclass
class SourceRecord:
    """`load` returns the image bytes; it is called once, inside the ingest transaction."""

    source: str
    external_id: str
    uri: str
    file: str  # for error messages: the file the record came from
    load: Callable[[], bytes]
    annotations: list[RecordAnnotation] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    name: str = ""  # how a user finds the record ("task 12"); defaults to the external id
    # A reader cannot raise for one bad record without ending its stream, so it yields the
    # record with its error; the writer fails the ingest or skips it (--skip-invalid).
    error: InputError | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.external_id


@dataclass(frozen=True)
class ReadOptions:
    """What a user can tell a reader; each reader uses the fields that apply to it."""

    source: str | None = None  # stable source name; readers derive one when absent
    image_root: Path | None = None  # where image references resolve (default: the input)
    image_key: str = "image"  # Label Studio task data field holding the image
    label_config: Path | None = None  # Label Studio labeling config (JSON-MIN needs it)
    # A stable name for where the input came from when its path is not (an archive
    # extracted into a temporary folder): readers build default source names from it.
    origin: str | None = None


@dataclass(frozen=True)
class Format:
    """One source format: a streaming reader and a cheap detector for `--format auto`."""

    name: str
    read: Callable[[Path, ReadOptions], Iterator[SourceRecord]]
    detect: Callable[[Path], bool]
    reads: str  # which library reads it and what: shown in --help and docs
