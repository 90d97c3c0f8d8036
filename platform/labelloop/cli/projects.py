"""`labelloop project ...`: create and list projects, and choose what starts a project's
pipeline (`schedule`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from labelloop.cli.options import JsonOpt, context, recipe_overrides
from labelloop.cli.output import console, emit_json, handle_errors
from labelloop.kinds import TASKS
from labelloop.push.targets import NAMES as PUSH_TARGETS

app = typer.Typer(help="Create and list projects.", no_args_is_help=True)


@app.command("create")
@handle_errors
def project_create(
    name: str,
    task: Annotated[str, typer.Option(help=" | ".join(TASKS))],
    labels: Annotated[
        str, typer.Option(help="Comma-separated class names, e.g. RBC,WBC,Platelets")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Create a project (idempotent: the same name, task and labels return it)."""
    from labelloop.projects import create_project, label_names

    ctx = context()
    with ctx.db.session() as s:
        project, created = create_project(s, name, task, labels.split(","))
        data = {
            "id": project.id,
            "name": project.name,
            "task": project.task,
            "labels": label_names(project),
            "created": created,
        }
    if as_json:
        emit_json(data)
    else:
        verb = "created" if created else "exists:"
        console.print(f"project {verb} {name} ({task}; {', '.join(data['labels'])})")


@app.command("list")
@handle_errors
def project_list(as_json: JsonOpt = False) -> None:
    """List projects."""
    from sqlalchemy import select

    from labelloop.db.models import Project

    ctx = context()
    with ctx.db.session() as s:
        rows = [
            {"name": p.name, "task": p.task, "labels": [lc.name for lc in p.labels]}
            for p in s.scalars(select(Project).order_by(Project.name))
        ]
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            console.print(f"{r['name']}  {r['task']}  {', '.join(r['labels'])}")


@app.command("draw")
@handle_errors
def project_draw(
    name: Annotated[str, typer.Argument(help="Project name.")],
    kind: Annotated[
        str | None,
        typer.Argument(
            help="Shape kind annotators draw, e.g. polygon (segmentation: mask | polygon)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or choose the one tool annotators draw with in Label Studio (a segmentation
    project: the brush by default, or polygons). New Label Studio projects get it; an
    existing project keeps its labeling config until you change it there."""
    from labelloop.projects import draw_kind, get_project, set_draw

    ctx = context()
    with ctx.db.session() as s:
        project = get_project(s, name)
        if kind is not None:
            set_draw(project, kind)
        data = {"project": name, "task": project.task, "draw": draw_kind(project)}
    if as_json:
        emit_json(data)
    else:
        console.print(f"{name} ({data['task']}): annotators draw {data['draw']}")


@app.command("schedule")
@handle_errors
def project_schedule(
    name: Annotated[str, typer.Argument(help="Project name.")],
    cron: Annotated[
        str | None, typer.Option(help="Beat crontab 'm h dom mon dow' ('default' resets).")
    ] = None,
    min_annotations: Annotated[
        int | None, typer.Option(help="Annotation events that start a retrain.", min=1)
    ] = None,
    debounce: Annotated[
        float | None, typer.Option(help="Seconds of quiet before it starts.", min=0)
    ] = None,
    budget: Annotated[int | None, typer.Option(help="Images per round.", min=1)] = None,
    push_to: Annotated[str | None, typer.Option(help=" | ".join(PUSH_TARGETS))] = None,
    active: Annotated[
        bool | None, typer.Option("--active/--paused", help="Run the triggers, or not.")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="YAML file of recipe fields every pipeline run overrides.", exists=True),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or change what starts the project's pipeline: its crontab (beat), the
    webhook threshold and debounce, the round size and push target."""
    from labelloop.pipelines.triggers import effective_triggers, update_triggers
    from labelloop.projects import get_project

    changes: dict[str, Any] = {}
    if cron is not None:
        changes["cron"] = None if cron == "default" else cron
    for key, value in (
        ("min_annotations", min_annotations),
        ("debounce_s", debounce),
        ("budget", budget),
        ("push_to", push_to),
        ("active", active),
    ):
        if value is not None:
            changes[key] = value
    if recipe is not None:
        changes["recipe"] = recipe_overrides(recipe)
    ctx = context()
    with ctx.db.session() as s:
        project = get_project(s, name)
        if changes:
            update_triggers(project, changes)
        eff = effective_triggers(project, ctx.settings).model_dump()
    if as_json:
        emit_json(eff)
        return
    for key, value in eff.items():
        console.print(f"{key:16} {value}")
