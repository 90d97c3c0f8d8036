"""What the command modules share: the common options, the context builder, and the
lookups behind options that name a model version or a recipe file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.db import migrate
from labelloop.errors import ConfigError, InputError, NotFoundError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name.")]
MaybeProjectOpt = Annotated[str | None, typer.Option("--project", "-p", help="Project name.")]
# Wiring a Label Studio project to labelloop (`webhooks register`, `labelstudio connect`).
LsProjectOpt = Annotated[int, typer.Option("--ls-project", help="Label Studio project id.")]
ServeUrlOpt = Annotated[
    str, typer.Option("--url", help="Base URL where Label Studio reaches `labelloop serve`.")
]
LsUrlOpt = Annotated[
    str | None, typer.Option(help="Label Studio URL (default: LABELLOOP_LABELSTUDIO_URL).")
]
LsLabelMapOpt = Annotated[
    list[str] | None, typer.Option(help="Rename Label Studio classes when syncing: 'src=dst'.")
]
ProjectSecretOpt = Annotated[
    bool | None,
    typer.Option(
        "--project-secret/--shared-secret",
        help="Give Label Studio a new webhook secret of the project's own, or the shared "
        "LABELLOOP_WEBHOOK_SECRET (default: whichever the project uses; its own is renewed).",
    ),
]
# 0 epochs trains nothing: refused (exit 2) rather than silently replaced by the recipe's.
EpochsOpt = Annotated[
    int | None, typer.Option(help="Override the recipe's epochs (at least 1).", min=1)
]
RecipeOpt = Annotated[
    Path | None,
    typer.Option(
        help="Recipe YAML file: the fields it sets override the task's default recipe "
        "(`labelloop recipe TASK` prints every field); --epochs overrides the file.",
        exists=True,
        dir_okay=False,
    ),
]


def context(*, migrate_sqlite: bool = True) -> Context:
    """Build the context; an embedded SQLite database is migrated on first use, a server
    database must be migrated explicitly (`labelloop db upgrade`)."""
    ctx = Context(Settings())
    set_context(ctx)
    url = ctx.settings.database_url
    if migrate.current_revision(url) != migrate.head_revision(url):
        if url.startswith("sqlite") and migrate_sqlite:
            migrate.upgrade(url)
        else:
            raise ConfigError("the database schema is not up to date; run `labelloop db upgrade`")
    return ctx


def interactive(as_json: bool) -> bool:
    """Progress bars and spinners only for a person at a terminal."""
    return not as_json and sys.stderr.isatty()


def recipe_overrides(recipe: Path | None, epochs: int | None = None) -> dict[str, Any]:
    """The recipe fields a --recipe file and --epochs set: overrides of the task's default
    recipe, checked against it where the recipe is resolved."""
    import yaml

    overrides: dict[str, Any] = {}
    if recipe is not None:
        try:
            data = yaml.safe_load(recipe.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"not valid YAML: {exc}", file=str(recipe)) from None
        if not isinstance(data, dict):
            raise InputError("a recipe file holds a mapping of fields", file=str(recipe))
        overrides.update(data)
    if epochs is not None:
        overrides["epochs"] = epochs
    return overrides


def resolve_model(ctx: Context, model: str | None, project: str | None) -> int:
    """The model version --model names (a name or an id), within --project when given;
    without --model, the project's production model, else its newest."""
    from labelloop.projects import get_project
    from labelloop.registry import find_model

    if not model and not project:
        raise InputError("name a model version (--model NAME) or a project (--project)")
    with ctx.db.session() as s:
        mv = find_model(s, get_project(s, project).id if project else None, model)
    if mv is None:
        where = f" in project {project!r}" if project else ""
        if model:
            raise NotFoundError(f"no model version {model!r}{where}")
        raise NotFoundError(f"project {project!r} has no model version; run `labelloop train`")
    return mv
