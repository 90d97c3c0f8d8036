"""Get-or-create that survives concurrent writers.

A SELECT-then-INSERT races: two transactions both find no row and the second INSERT fails
on the unique key (two ingests sharing an image). `insert_new` is one
`INSERT ... ON CONFLICT DO NOTHING RETURNING id`: on PostgreSQL it waits for a concurrent
transaction holding the same key and then does nothing, so the caller reads the winner's
row; it never raises for the key."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from labelloop.errors import ConfigError


def insert_new(s: Session, model: Any, values: dict[str, Any], keys: list[str]) -> int | None:
    """The new row's id, or None when a row with the same `keys` exists (committed by
    another transaction, or written earlier by this one)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ConfigError(f"unsupported database {dialect!r}: use PostgreSQL or SQLite")
    stmt = (
        insert(model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=keys)
        .returning(model.id)
    )
    return s.scalar(stmt)
