"""Get-or-create that survives concurrent writers.

A SELECT-then-INSERT races: two transactions both find no row and the second INSERT fails
on the unique key (two ingests sharing an image). `insert_new` is one
`INSERT ... ON CONFLICT DO NOTHING RETURNING id`: on PostgreSQL it waits for a concurrent
transaction holding the same key and then does nothing, so the caller reads the winner's
row; it never raises for the key."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, make_transient_to_detached

from labelloop.errors import ConfigError


def insert_new(s: Session, model: Any, values: dict[str, Any], keys: list[str]) -> int | None:
    """The new row's id, or None when a row with the same `keys` exists (committed by
    another transaction, or written earlier by this one)."""
    stmt = _insert_statement(s.get_bind().dialect.name, model, tuple(keys))
    # The statement is built once and the values bound at execution: building it with the
    # values in it cost more than the INSERT itself (an ingest runs it once per new row).
    return s.connection().execute(stmt, values).scalar()


@cache
def _insert_statement(dialect: str, model: Any, keys: tuple[str, ...]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ConfigError(f"unsupported database {dialect!r}: use PostgreSQL or SQLite")
    return insert(model).on_conflict_do_nothing(index_elements=list(keys)).returning(model.id)


def get_or_insert(
    s: Session, model: Any, values: dict[str, Any], keys: list[str]
) -> tuple[Any, bool]:
    """The row with `values`' `keys` and whether this call inserted it (`insert_new`), or
    found the one that was there.

    Pending rows of the session are not flushed first (an ingest writes a batch at once;
    an autoflush per call made that one INSERT per row again), and a row this call
    inserted joins the session as it was written, without a SELECT to read it back."""
    with s.no_autoflush:
        new_id = insert_new(s, model, values, keys)
        if new_id is None:
            found = select(model).where(*(getattr(model, k) == values[k] for k in keys))
            return s.scalars(found).one(), False
    return _attach(s, model, new_id, values), True


def get_or_insert_many(
    s: Session, model: Any, rows: list[dict[str, Any]], keys: list[str]
) -> list[Any]:
    """`get_or_insert` for many rows in one multi-row INSERT (and one SELECT for those
    that were there): the rows, in the order of `rows`."""
    if not rows:
        return []
    stmt = _insert_statement(s.get_bind().dialect.name, model, tuple(keys))
    stmt = stmt.returning(*(getattr(model, k) for k in keys), model.id)
    with s.no_autoflush:
        ids = {tuple(r[:-1]): r[-1] for r in s.connection().execute(stmt, rows)}
        out: dict[tuple, Any] = {}
        for values in rows:
            key = tuple(values[k] for k in keys)
            if key in ids:
                out[key] = _attach(s, model, ids[key], values)
        missing = [tuple(v[k] for k in keys) for v in rows if tuple(v[k] for k in keys) not in out]
        if missing:
            found = select(model).where(tuple_(*(getattr(model, k) for k in keys)).in_(missing))
            for row in s.scalars(found):
                out[tuple(getattr(row, k) for k in keys)] = row
    return [out[tuple(v[k] for k in keys)] for v in rows]


def _attach(s: Session, model: Any, new_id: int, values: dict[str, Any]) -> Any:
    """The row just inserted with `values`, persistent in the session without a SELECT."""
    stale = s.identity_map.get(s.identity_key(model, new_id))
    if stale is not None:  # a row of a rolled-back savepoint whose id the database reused
        s.expunge(stale)
    row = model(id=new_id, **values)
    make_transient_to_detached(row)  # persistent once added: its columns are not re-read
    s.add(row)
    return row
