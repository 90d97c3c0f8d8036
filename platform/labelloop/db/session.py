"""Engine and session handling; one transaction per unit of work."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

IMMEDIATE = "labelloop_sqlite_immediate"


def make_engine(url: str) -> Engine:
    """SQLite gets WAL + a busy timeout so the in-process worker and the CLI can share it;
    other databases get pre-ping so a dropped connection is replaced, not reused."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            # pysqlite would otherwise BEGIN only before the first write, so a SAVEPOINT
            # issued first (--skip-invalid) became the outer transaction and its RELEASE
            # committed: SQLAlchemy's documented recipe hands BEGIN to SQLAlchemy.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # pragma: no cover - trivial
            # IMMEDIATE takes the write lock up front: a transaction that reads and then
            # decides what to write (one pipeline per project) waits its turn instead of
            # failing with "database is locked" when another writer got in between.
            immediate = conn.get_execution_options().get(IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return _fork_safe(engine)
    return _fork_safe(create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5))


def _fork_safe(engine: Engine) -> Engine:
    """A forked process (a DDP training worker reporting progress) opens its own
    connections instead of sharing the parent's pooled ones: SQLAlchemy's recipe for
    multiprocessing (`dispose(close=False)` in the child)."""
    ref = weakref.ref(engine)

    def _after_fork_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=_after_fork_in_child)
    return engine


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, *, serialized: bool = False) -> Iterator[Session]:
        """A transaction: commits on success, rolls back everything on any error.

        `serialized`: the transaction reads and then writes what it read decided; on SQLite
        it takes the write lock from the start (PostgreSQL callers use an advisory lock)."""
        s = self._factory()
        if serialized and self.url.startswith("sqlite"):
            s.connection(execution_options={IMMEDIATE: True})
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()
