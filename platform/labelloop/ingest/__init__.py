"""Ingest: source records -> canonical images, source items and annotation revisions."""

from labelloop.ingest.core import IngestReport, ingest_records
from labelloop.ingest.formats import formats, ingest_path

__all__ = ["IngestReport", "formats", "ingest_path", "ingest_records"]
