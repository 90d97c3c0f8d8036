"""Converters between annotation tools' own formats and the canonical shapes in domain.py.

Each module here is pure (no network, no database), so ingest, export and tests share one
code path per tool.
"""
