"""`labelloop db ...`: the database schema (Alembic migrations)."""

from __future__ import annotations

from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt
from labelloop.cli.output import console, emit_json, handle_errors
from labelloop.config import Settings
from labelloop.db import migrate

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command("upgrade")
@handle_errors
def db_upgrade(
    revision: str = "head",
    wait: Annotated[
        float,
        typer.Option(help="Seconds to wait for the database to accept connections first."),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Apply migrations up to REVISION (default: head). Deployments run this once before
    the API, workers and beat start (`--wait` for a database that is still starting)."""
    url = Settings().database_url
    migrate.wait_for_database(url, wait)
    migrate.upgrade(url, revision)
    current = migrate.current_revision(url)
    if as_json:
        emit_json({"revision": current})
    else:
        console.print(f"database at revision {current}")


@app.command("current")
@handle_errors
def db_current(as_json: JsonOpt = False) -> None:
    """Show the database's revision and the newest one available."""
    url = Settings().database_url
    data = {"revision": migrate.current_revision(url), "head": migrate.head_revision(url)}
    if as_json:
        emit_json(data)
    else:
        console.print(f"revision {data['revision']} (newest available: {data['head']})")
