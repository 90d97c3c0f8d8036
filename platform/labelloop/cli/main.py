"""`labelloop`: every stage of the loop as a command; `--json` on each for scripting.

This module only assembles the app: each command module owns its commands (and its group,
if it has one), and the shared options live in `labelloop.cli.options`. Commands call the
same stage functions as the Celery tasks; exit code 2 means bad input or state (the
message says which file, record or name, and why)."""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from labelloop.cli import (
    datasets,
    db,
    ingest,
    labelstudio,
    models,
    projects,
    report,
    rounds,
    runs,
    serve,
    simulate,
    status,
    sync,
    tokens,
    training,
    watch,
    webhooks,
)

app = typer.Typer(
    name="labelloop",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Annotation-to-model active learning for cell and medical images.\n\n"
    "The loop: **ingest** annotations -> **dataset freeze** -> **train** -> "
    "**score** the unlabeled pool -> **select** the least confident -> "
    "**push** them back to annotators with predictions. Settings come from "
    "LABELLOOP_* environment variables or .env (see docs/operations.md).",
)
# Commands first, in the order of the loop, then the groups, then the plugins' commands.
for commands in (ingest, training, status, rounds, models, watch, simulate, serve):
    app.add_typer(commands.app)
for name, group in (
    ("db", db),
    ("project", projects),
    ("dataset", datasets),
    ("sync", sync),
    ("runs", runs),
    ("webhooks", webhooks),
    ("labelstudio", labelstudio),
    ("report", report),
    ("tokens", tokens),
):
    app.add_typer(group.app, name=name)


def _load_plugins() -> None:
    """Commands contributed by other packages of the distribution (e.g. the workers' demo),
    discovered by entry point so this package never imports them."""
    for ep in entry_points(group="labelloop.cli"):
        ep.load()(app)


_load_plugins()
