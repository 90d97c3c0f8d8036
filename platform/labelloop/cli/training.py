"""`labelloop train`: a model version from a frozen dataset version, in this process."""

from __future__ import annotations

from typing import Annotated

import typer

from labelloop.cli.options import (
    EpochsOpt,
    JsonOpt,
    ProjectOpt,
    RecipeOpt,
    context,
    interactive,
    recipe_overrides,
)
from labelloop.cli.output import console, emit_json, handle_errors, progress
from labelloop.context import Context

app = typer.Typer()


def _latest_dataset(ctx: Context, project: str, number: int | None) -> int:
    from sqlalchemy import select

    from labelloop.db.models import DatasetVersion
    from labelloop.errors import NotFoundError
    from labelloop.projects import get_project

    with ctx.db.session() as s:
        p = get_project(s, project)
        q = select(DatasetVersion.id).where(DatasetVersion.project_id == p.id)
        q = q.where(DatasetVersion.number == number) if number else q
        dv = s.scalar(q.order_by(DatasetVersion.number.desc()).limit(1))
    if dv is None:
        raise NotFoundError(
            f"project {project!r} has no dataset version"
            f"{f' {number}' if number else ''}; run `labelloop dataset freeze`"
        )
    return dv


@app.command()
@handle_errors
def train(
    project: ProjectOpt,
    epochs: EpochsOpt = None,
    dataset_version: Annotated[
        int | None,
        typer.Option("--dataset-version", help="Dataset version number (default: the latest)."),
    ] = None,
    recipe: RecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on a frozen dataset version; the same version and recipe never train twice."""
    from labelloop.runs import execute_run, request_run, trained_version

    overrides = recipe_overrides(recipe, epochs) or None
    ctx = context()
    dv = _latest_dataset(ctx, project, dataset_version)
    mv_id = trained_version(ctx, dv, overrides=overrides)
    trained = False
    if mv_id is None:
        from labelloop.locks import project_lock

        # The workers' lock: a CLI training never runs beside a worker's for this project.
        # It is taken before the training run is recorded, so a lock that cannot be had
        # (busy, or Redis down) leaves no queued run behind that nothing would ever start.
        with project_lock(ctx.settings, project) as held:
            req = request_run(ctx, dv, overrides=overrides)
            mv_id = req.model_version_id
            if mv_id is None:
                with progress("train", None, interactive(as_json)) as update:

                    def on_progress(p: dict) -> None:
                        held.check()
                        total = p.get("epochs")
                        loss = p.get("loss")
                        info = f"loss {loss:.3f}" if isinstance(loss, float) else ""
                        update(int(p.get("epoch", 0)), total, info)

                    mv_id = execute_run(ctx, req.run_id, on_progress=on_progress)
                    trained = True
    from labelloop.db.models import ModelVersion
    from labelloop.reports import project_status

    st = project_status(ctx, project)
    mv = next(m for m in st["model_versions"] if m["id"] == mv_id)
    if as_json:
        with ctx.db.session() as s:
            run_id = s.get(ModelVersion, mv_id).training_run_id
        emit_json(
            {
                "training_run_id": run_id,
                "model_version": mv,
                "trained": trained,
            }
        )
    else:
        metric = mv.get("primary_metric") or "mean_dice"
        value = (mv["metrics"] or {}).get(metric)
        shown = f"{value:.3f}" if isinstance(value, int | float) else "-"
        console.print(
            f"model version {mv['name']} ({mv['stage']}): test {metric} {shown}, "
            f"{mv['train_seconds']} s training"
        )
