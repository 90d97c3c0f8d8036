"""`labelloop models`, `promote` and `count`: the registry and what its models produce.

Registered on the main app by `register(app)`; each command builds its context through
`labelloop.cli.main.context` (imported when called, so the modules do not import each
other at load time)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labelloop.cli.output import console, emit_json, handle_errors, progress
from labelloop.kinds import DEFAULT_TASK, TASKS

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _fmt(v: object, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


def resolve_model(ctx, model: str | None, project: str | None) -> int:
    """A model version id from its name (or numeric id); without a name, the project's
    production model (else its newest)."""
    from sqlalchemy import select

    from labelloop.db.models import ModelVersion
    from labelloop.errors import InputError, NotFoundError
    from labelloop.projects import get_project

    with ctx.db.session() as s:
        q = select(ModelVersion.id)
        if project:
            q = q.where(ModelVersion.project_id == get_project(s, project).id)
        if model:
            cond = ModelVersion.name == model
            if model.isdigit():
                cond = cond | (ModelVersion.id == int(model))
            q = q.where(cond)
        elif not project:
            raise InputError("name a model version (--model NAME) or a project (--project)")
        q = q.order_by((ModelVersion.stage == "production").desc(), ModelVersion.id.desc())
        mv = s.scalar(q.limit(1))
    if mv is None:
        where = f" in project {project!r}" if project else ""
        raise NotFoundError(
            f"no model version {model!r}{where}" if model else f"no model version{where}"
        )
    return mv


def list_models(ctx, project: str) -> list[dict]:
    from labelloop.reports import model_versions

    return model_versions(ctx, project)


def register(app: typer.Typer) -> None:
    @app.command("models")
    @handle_errors
    def models_cmd(
        project: Annotated[str, typer.Option("--project", "-p", help="Project name.")],
        as_json: JsonOpt = False,
    ) -> None:
        """List a project's model versions: stage, test metric, dataset version, recipe hash,
        and why each reached its stage."""
        from labelloop.cli.main import context

        rows = list_models(context(), project)
        if as_json:
            emit_json(rows)
            return
        if not rows:
            console.print(f"project {project!r} has no model versions yet; run `labelloop train`")
            return
        t = Table(title=f"model versions of {project} (test split)", title_justify="left")
        for c in ("name", "stage", "data", "metric", "test", "recipe", "train s", "why"):
            t.add_column(c)
        for r in rows:
            t.add_row(
                r["name"],
                r["stage"],
                f"v{r['dataset_version']}",
                r["metric"],
                _fmt(r["test"], 4),
                (r["recipe_hash"] or "")[:10],
                _fmt(r["train_seconds"], 1),
                (("forced: " if r["forced"] else "") + (r["stage_reason"] or "")),
            )
        console.print(t)

    @app.command("promote")
    @handle_errors
    def promote_cmd(
        model: Annotated[str, typer.Argument(help="Model version name (or id).")],
        reason: Annotated[
            str, typer.Option("--reason", help="Why the gate is overridden (recorded).")
        ],
        project: Annotated[
            str | None, typer.Option("--project", "-p", help="Project name.")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Make a model version production regardless of the promotion gate; the reason is
        recorded with the promotion and the previous production model is archived."""
        from labelloop.cli.main import context
        from labelloop.errors import InputError
        from labelloop.registry import promote

        if not reason.strip():
            raise InputError("--reason must say why the gate is overridden")
        ctx = context()
        mv = resolve_model(ctx, model, project)
        promote(ctx, mv, reason.strip(), forced=True)
        from labelloop.db.models import ModelVersion

        with ctx.db.session() as s:
            row = s.get(ModelVersion, mv)
            data = {"id": row.id, "name": row.name, "stage": row.stage, "reason": reason}
        if as_json:
            emit_json(data)
        else:
            console.print(f"{data['name']} is now {data['stage']} ({reason})")

    @app.command("recipe")
    @handle_errors
    def recipe_cmd(
        task: Annotated[str, typer.Argument(help=f"One of: {', '.join(TASKS)}.")] = DEFAULT_TASK,
        as_json: JsonOpt = False,
    ) -> None:
        """Print a task's default training recipe: every field a recipe file may set
        (`labelloop train --recipe FILE`); unknown fields are refused."""
        from labelloop.training.recipe import parse_recipe

        recipe = parse_recipe({}, task)
        if as_json:
            emit_json(recipe.model_dump(mode="json"))
        else:
            sys.stdout.write(recipe.to_yaml())

    @app.command("count")
    @handle_errors
    def count_cmd(
        images: Annotated[
            list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")
        ],
        out: Annotated[Path, typer.Option("--out", help="Folder for overlays and counts.")],
        model: Annotated[
            str | None,
            typer.Option("--model", help="Model version name (default: production of --project)."),
        ] = None,
        project: Annotated[
            str | None, typer.Option("--project", "-p", help="Project name.")
        ] = None,
        overlays: Annotated[
            bool, typer.Option("--overlays/--no-overlays", help="Write an overlay PNG per image.")
        ] = True,
        as_json: JsonOpt = False,
    ) -> None:
        """Count cells per class in images with a model version.

        Writes `<image>.overlay.png` (boxes or contours and a count legend), `counts.csv`
        and `counts.json` into `--out`. Images already labelled in the project (same
        content) are compared with their labels: count MAE and relative error per class.
        """
        from labelloop.cli.main import context
        from labelloop.counting.stage import count_images

        ctx = context()
        mv = resolve_model(ctx, model, project)
        with progress("count", None, not as_json and sys.stderr.isatty()) as update:
            report = count_images(
                ctx, mv, images, out, overlays=overlays, on_progress=lambda d, t: update(d, t)
            )
        data = report.to_json()
        if as_json:
            emit_json(data)
            return
        t = Table(title=f"counts by {report.model} ({len(report.images)} images)")
        t.add_column("class")
        t.add_column("total", justify="right")
        t.add_column("MAE / image", justify="right")
        t.add_column("relative error", justify="right")
        acc = report.accuracy() or {}
        for lb, total in report.totals().items():
            a = acc.get(lb) or {}
            t.add_row(lb, str(total), _fmt(a.get("mae"), 2), _fmt(a.get("relative_error"), 3))
        console.print(t)
        console.print(f"overlays, counts.csv and counts.json in {out}")
