"""Projects and what they hold: dataset versions, model versions with metrics, rounds."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from labelloop.access import Caller
from labelloop.api.auth import access, get_ctx, require_role
from labelloop.api.schemas import (
    DatasetVersionOut,
    ErrorOut,
    ModelVersionOut,
    ProjectOut,
    RoundOut,
    TriggersOut,
)
from labelloop.context import Context
from labelloop.db.models import Project
from labelloop.pipelines.triggers import effective_triggers, labelstudio_links
from labelloop.projects import get_project, label_names
from labelloop.reports import annotation_rounds, dataset_versions, model_versions

router = APIRouter(prefix="/projects", tags=["projects"])
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such project"}}


def _project_out(ctx: Context, project: Project) -> ProjectOut:
    trig = effective_triggers(project, ctx.settings)
    return ProjectOut(
        name=project.name,
        task=project.task,
        labels=label_names(project),
        triggers=TriggersOut(**trig.model_dump(exclude={"debounce_max_s"})),
        labelstudio=[dict(lk) for lk in labelstudio_links(project)],
    )


@router.get("", response_model=list[ProjectOut], summary="List projects", **access("read"))
def list_projects(
    ctx: Context = Depends(get_ctx), caller: Caller = Depends(require_role("read"))
) -> list[ProjectOut]:
    """Every project (the token's own only, for a token limited to one) with its labels,
    its effective trigger settings (its own, else the defaults) and the Label Studio
    projects linked to it."""
    from sqlalchemy import select

    query = select(Project).order_by(Project.name)
    if caller.project_id is not None:
        query = query.where(Project.id == caller.project_id)
    with ctx.db.session() as s:
        return [_project_out(ctx, p) for p in s.scalars(query)]


@router.get(
    "/{project}",
    response_model=ProjectOut,
    responses=NOT_FOUND,
    summary="One project",
    **access("read"),
)
def get_project_view(project: str, ctx: Context = Depends(get_ctx)) -> ProjectOut:
    with ctx.db.session() as s:
        return _project_out(ctx, get_project(s, project))


@router.get(
    "/{project}/dataset-versions",
    response_model=list[DatasetVersionOut],
    responses=NOT_FOUND,
    summary="Frozen dataset versions",
    **access("read"),
)
def list_dataset_versions(project: str, ctx: Context = Depends(get_ctx)) -> list[dict]:
    """Oldest first; each is immutable and identified by the hash of its content."""
    return dataset_versions(ctx, project)


@router.get(
    "/{project}/model-versions",
    response_model=list[ModelVersionOut],
    responses=NOT_FOUND,
    summary="Model versions with their metrics",
    **access("read"),
)
def list_model_versions(project: str, ctx: Context = Depends(get_ctx)) -> list[dict]:
    """Oldest first: stage, test and validation metrics, the promotion gate's comparison
    with production, and why each version reached its stage."""
    return model_versions(ctx, project)


@router.get(
    "/{project}/rounds",
    response_model=list[RoundOut],
    responses=NOT_FOUND,
    summary="Annotation rounds",
    **access("read"),
)
def list_rounds(
    project: str,
    items: int = Query(20, ge=0, le=1000, description="images listed per round"),
    ctx: Context = Depends(get_ctx),
) -> list[dict]:
    """Each round's strategy, its images (most informative first, with their score and
    predicted counts) and where it was pushed."""
    return annotation_rounds(ctx, project, items=items)
