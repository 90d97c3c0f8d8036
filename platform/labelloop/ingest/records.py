"""What a reader yields: one image as a source knows it, with its annotations, and the
two ways every reader builds one (an image with its annotations, or the record's error)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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
    # What the ingest report should say about a record it keeps (e.g. overlapping masks).
    warnings: list[str] = field(default_factory=list)
    # (width, height) the annotation file gives the image, where it does: shapes drawn on
    # an image of another size would land in the wrong place, so the ingest compares.
    declared_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.external_id


def file_loader(path: Path, *, file: str, record: str) -> Callable[[], bytes]:
    """Reads the image when the ingest asks for it; a read failure is the record's error."""

    def load() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InputError(
                f"image file {path} cannot be read ({exc.strerror})", file=file, record=record
            ) from None

    return load


def image_record(
    *,
    source: str,
    external_id: str,
    uri: str,
    file: str,
    name: str,
    image: Path | str,
    annotations: list[RecordAnnotation],
    meta: dict | None = None,
    load: Callable[[], bytes] | None = None,
    declared_size: tuple[int, int] | None = None,
) -> SourceRecord:
    """A record whose image was found: `meta["image_path"]` says where, and the image is
    read from that file when the ingest asks (unless `load` reads it from elsewhere)."""
    return SourceRecord(
        source=source,
        external_id=external_id,
        uri=uri,
        file=file,
        load=load or file_loader(Path(image), file=file, record=name),
        annotations=annotations,
        meta={"image_path": str(image), **(meta or {})},
        name=name,
        declared_size=declared_size,
    )


def note_left_out(rec: SourceRecord, left: Mapping[str, int], why: str) -> SourceRecord:
    """Say on `rec` which of its shapes were left out and why: counted in
    `meta["ignored_shapes"]` and a warning of the ingest report naming the file and the
    record, never only a log line."""
    if left:
        rec.meta["ignored_shapes"] = dict(sorted(left.items()))
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(left.items()))
        rec.warnings.append(f"{rec.file} ({rec.name}): {kinds} shape(s) left out ({why})")
    return rec


def error_record(
    error: InputError | str,
    *,
    source: str,
    external_id: str,
    file: str,
    name: str,
    uri: str = "",
) -> SourceRecord:
    """The record a reader yields instead of raising, so the stream goes on. The error
    names the file and the record: its own when it has them, else the reader's."""
    if isinstance(error, str):
        error = InputError(error, file=file, record=name)
    else:
        error = InputError(error.reason, file=error.file or file, record=error.record or name)
    return SourceRecord(
        source=source,
        external_id=external_id,
        uri=uri,
        file=file,
        load=bytes,
        name=name,
        error=error,
    )


@dataclass(frozen=True)
class ReadOptions:
    """What a user can tell a reader; each reader uses the fields that apply to it."""

    source: str | None = None  # stable source name; readers derive one when absent
    image_root: Path | None = None  # where image references resolve (default: the input)
    image_key: str = "image"  # Label Studio task data field holding the image
    label_config: Path | None = None  # Label Studio labeling config (JSON-MIN needs it)


def default_source(kind: str, folder: Path) -> str:
    """`<kind>:<folder name>`, the source a reader names when the user gives none and the
    export names none itself. Only the export's own folder name counts, never where it
    lies: the same export read from a folder, from another copy of it, or from its .zip
    (whose single top-level folder, or else the archive's name without .zip, is that
    folder) is one source, so reading it again adds no duplicate source items."""
    return f"{kind}:{folder.name or 'export'}"


@dataclass(frozen=True)
class Format:
    """One source format: a streaming reader and a cheap detector for `--format auto`."""

    name: str
    read: Callable[[Path, ReadOptions], Iterator[SourceRecord]]
    detect: Callable[[Path], bool]
    reads: str  # which library reads it and what: shown in --help and docs
