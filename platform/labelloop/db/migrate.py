"""Run Alembic from code so `labelloop db upgrade`, the API's prestart and tests share it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from labelloop.db.session import make_engine
from labelloop.errors import ConfigError


def migrations_dir() -> Path:
    env = os.environ.get("LABELLOOP_MIGRATIONS_DIR")
    candidates = [Path(env)] if env else []
    # platform/labelloop/db/migrate.py -> repository root (editable install / source tree)
    candidates.append(Path(__file__).resolve().parents[3] / "migrations")
    for c in candidates:
        if (c / "env.py").is_file():
            return c
    raise ConfigError(
        "cannot find the migrations folder; set LABELLOOP_MIGRATIONS_DIR to the repository's "
        "migrations/ directory"
    )


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def wait_for_database(url: str, timeout_s: float, every_s: float = 1.0) -> None:
    """Return once the database accepts a connection; ConfigError after `timeout_s`
    (0: try once). The prestart of a deployment calls this before migrating."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + timeout_s
    while True:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise ConfigError(
                    f"the database does not accept connections after {timeout_s:.0f} s: {reason}"
                ) from None
            time.sleep(every_s)
        finally:
            engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    make_engine(url).dispose()  # creates an SQLite file's folder
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()
