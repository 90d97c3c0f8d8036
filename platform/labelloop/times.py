"""Times as annotation tools write them: ISO 8601 text in any zone, read as UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 date and time as an aware UTC datetime, None when `value` is not one.
    A time written without a zone is taken as UTC; text compared as text would order
    `10:00+05:00` (05:00 UTC) after `06:00Z`."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
