"""What the dashboard pages show, as plain data read in one session per page.

Aggregates are computed in SQL (counts, first-annotation times, dataset diffs), so the
project page stays fast with thousands of images and a hundred model versions."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, Integer, and_, case, cast, func, select
from sqlalchemy.orm import Session, aliased

from labelloop.db.models import (
    Annotation,
    AnnotationRound,
    DatasetItem,
    DatasetVersion,
    ModelVersion,
    PipelineRun,
    Project,
    Promotion,
    Push,
    PushItem,
    RoundItem,
    SourceItem,
    TrainingRun,
    WebhookEvent,
)
from labelloop.errors import NotFoundError
from labelloop.projects import get_project, label_names

RECENT = 30  # pipeline runs and webhook events listed on a project page


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


def primary(mv_metrics: dict[str, Any]) -> tuple[str, float | None]:
    """The model version's promotion metric and its test value."""
    name = mv_metrics.get("primary_metric") or "mean_dice"
    value = (mv_metrics.get("test") or {}).get(name)
    return name, value if isinstance(value, int | float) else None


def image_counts(s: Session, pid: int) -> dict[str, int]:
    """Images of a project: labelled (an active annotation), unlabeled, and out with
    annotators (in an open round and not labelled yet)."""
    total = s.scalar(
        select(func.count(func.distinct(SourceItem.image_id))).where(SourceItem.project_id == pid)
    )
    labelled_q = select(Annotation.image_id).where(
        Annotation.project_id == pid, Annotation.state == "active"
    )
    labelled = s.scalar(
        select(func.count(func.distinct(Annotation.image_id))).where(
            Annotation.project_id == pid, Annotation.state == "active"
        )
    )
    out = s.scalar(
        select(func.count(func.distinct(RoundItem.image_id)))
        .join(AnnotationRound, AnnotationRound.id == RoundItem.round_id)
        .where(
            AnnotationRound.project_id == pid,
            AnnotationRound.status == "open",
            RoundItem.image_id.not_in(labelled_q),
        )
    )
    return {
        "total": total or 0,
        "labelled": labelled or 0,
        "unlabeled": (total or 0) - (labelled or 0),
        "out": out or 0,
    }


def projects_overview(s: Session) -> list[dict[str, Any]]:
    rows = []
    for p in s.scalars(select(Project).order_by(Project.name)):
        latest = s.scalar(
            select(ModelVersion)
            .where(ModelVersion.project_id == p.id)
            .order_by(ModelVersion.id.desc())
            .limit(1)
        )
        production = s.scalar(
            select(ModelVersion)
            .where(ModelVersion.project_id == p.id, ModelVersion.stage == "production")
            .order_by(ModelVersion.id.desc())
            .limit(1)
        )
        rows.append(
            {
                "name": p.name,
                "task": p.task,
                "labels": label_names(p),
                **image_counts(s, p.id),
                "latest": _mv_brief(latest),
                "production": _mv_brief(production),
            }
        )
    return rows


def _mv_brief(mv: ModelVersion | None) -> dict[str, Any] | None:
    if mv is None:
        return None
    metric, value = primary(mv.metrics)
    return {"id": mv.id, "name": mv.name, "stage": mv.stage, "metric": metric, "value": value}


GROWTH_POINTS = 240  # label growth is drawn from at most this many time buckets


def _epoch(s: Session, column):
    """Seconds since 1970 of a timestamp column, in the session's SQL dialect."""
    if s.get_bind().dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Float)
    return func.extract("epoch", column)


def label_growth(s: Session, pid: int) -> list[tuple[datetime, int]]:
    """Cumulative number of labelled images over time (a labelled image counts from its
    first annotation, so the curve ends at the labelled count), bucketed in SQL into at
    most GROWTH_POINTS steps so a large project sends a few hundred rows, not one per
    image."""
    labelled = select(Annotation.image_id).where(
        Annotation.project_id == pid, Annotation.state == "active"
    )
    first = (
        select(_epoch(s, func.min(Annotation.created_at)).label("t"))
        .where(
            Annotation.project_id == pid,
            Annotation.state.in_(("active", "superseded")),
            Annotation.image_id.in_(labelled),
        )
        .group_by(Annotation.image_id)
        .subquery()
    )
    lo, hi = s.execute(select(func.min(first.c.t), func.max(first.c.t))).one()
    if lo is None:
        return []
    width = max((float(hi) - float(lo)) / GROWTH_POINTS, 1e-6)
    bucket = cast((first.c.t - lo) / width, Integer).label("b")
    rows = s.execute(
        select(bucket, func.max(first.c.t), func.count()).group_by(bucket).order_by(bucket)
    )
    out, total = [], 0
    for _, t, n in rows:
        total += n
        out.append((datetime.fromtimestamp(float(t), UTC), total))
    return out


def dataset_diffs(s: Session, pid: int) -> list[dict[str, Any]]:
    """Each dataset version with what changed since its parent: images added, removed and
    relabelled (the same image with another annotation), in one query for all versions."""
    versions = list(
        s.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.project_id == pid)
            .order_by(DatasetVersion.number)
        )
    )
    new, old = aliased(DatasetItem), aliased(DatasetItem)
    diff = {
        dv_id: (n, added, relabelled)
        for dv_id, n, added, relabelled in s.execute(
            select(
                new.dataset_version_id,
                func.count(),
                func.sum(case((old.id.is_(None), 1), else_=0)),
                func.sum(
                    case(
                        (
                            and_(
                                old.id.is_not(None),
                                new.annotation_id.is_distinct_from(old.annotation_id),
                            ),
                            1,
                        ),
                        else_=0,
                    )
                ),
            )
            .join(DatasetVersion, DatasetVersion.id == new.dataset_version_id)
            .outerjoin(
                old,
                and_(
                    old.dataset_version_id == DatasetVersion.parent_id,
                    old.image_id == new.image_id,
                ),
            )
            .where(DatasetVersion.project_id == pid)
            .group_by(new.dataset_version_id)
        )
    }
    sizes = {dv_id: n for dv_id, (n, _, _) in diff.items()}
    out = []
    for dv in versions:
        n, added, relabelled = diff.get(dv.id, (0, 0, 0))
        parent = dv.parent_id
        out.append(
            {
                "id": dv.id,
                "number": dv.number,
                "hash": dv.content_hash[:12],
                "images": dv.stats.get("images", n),
                "splits": dv.stats.get("splits") or {},
                "created_at": _iso(dv.created_at),
                "added": int(added or 0),
                # What the parent had that is not carried over.
                "removed": None if parent is None else sizes.get(parent, 0) - (n - int(added or 0)),
                "relabelled": None if parent is None else int(relabelled or 0),
            }
        )
    return out


def model_rows(s: Session, pid: int) -> list[dict[str, Any]]:
    dv_info = {
        d.id: (d.number, (d.stats or {}).get("images"))
        for d in s.scalars(select(DatasetVersion).where(DatasetVersion.project_id == pid))
    }
    last_promo: dict[int, Promotion] = {}
    for pr in s.scalars(
        select(Promotion)
        .join(ModelVersion, ModelVersion.id == Promotion.model_version_id)
        .where(ModelVersion.project_id == pid)
        .order_by(Promotion.id)
    ):
        last_promo[pr.model_version_id] = pr
    rows = []
    for mv in s.scalars(
        select(ModelVersion).where(ModelVersion.project_id == pid).order_by(ModelVersion.id)
    ):
        metric, value = primary(mv.metrics)
        number, images = dv_info.get(mv.dataset_version_id, (None, None))
        pr = last_promo.get(mv.id)
        rows.append(
            {
                "id": mv.id,
                "name": mv.name,
                "stage": mv.stage,
                "metric": metric,
                "value": value,
                "dataset_version": number,
                "train_images": images,
                "epochs": mv.metrics.get("epochs"),
                "train_seconds": mv.metrics.get("train_seconds"),
                "reason": pr.reason if pr else None,
                "created_at": _iso(mv.created_at),
            }
        )
    return rows


def promotions(s: Session, pid: int) -> list[dict[str, Any]]:
    return [
        {
            "model": name,
            "from": pr.from_stage,
            "to": pr.to_stage,
            "reason": pr.reason,
            "forced": pr.forced,
            "evidence": pr.evidence,
            "at": _iso(pr.created_at),
        }
        for pr, name in s.execute(
            select(Promotion, ModelVersion.name)
            .join(ModelVersion, ModelVersion.id == Promotion.model_version_id)
            .where(ModelVersion.project_id == pid)
            .order_by(Promotion.id.desc())
        )
    ]


def round_rows(s: Session, pid: int) -> list[dict[str, Any]]:
    """Rounds with annotation progress: an image counts as annotated once an active
    annotation of it was recorded after the round was made."""
    size = dict(
        s.execute(
            select(RoundItem.round_id, func.count())
            .join(AnnotationRound, AnnotationRound.id == RoundItem.round_id)
            .where(AnnotationRound.project_id == pid)
            .group_by(RoundItem.round_id)
        ).all()
    )
    done = dict(
        s.execute(
            select(RoundItem.round_id, func.count(func.distinct(RoundItem.image_id)))
            .join(AnnotationRound, AnnotationRound.id == RoundItem.round_id)
            .join(
                Annotation,
                and_(
                    Annotation.image_id == RoundItem.image_id,
                    Annotation.project_id == pid,
                    Annotation.state == "active",
                    Annotation.created_at >= AnnotationRound.created_at,
                ),
            )
            .where(AnnotationRound.project_id == pid)
            .group_by(RoundItem.round_id)
        ).all()
    )
    targets: dict[int, list[str]] = defaultdict(list)
    for rid, target in s.execute(
        select(Push.round_id, Push.target)
        .join(AnnotationRound, AnnotationRound.id == Push.round_id)
        .where(AnnotationRound.project_id == pid)
        .order_by(Push.id)
    ):
        targets[rid].append(target)
    mv_names = dict(
        s.execute(
            select(ModelVersion.id, ModelVersion.name).where(ModelVersion.project_id == pid)
        ).all()
    )
    return [
        {
            "id": r.id,
            "number": r.number,
            "strategy": r.strategy,
            "status": r.status,
            "model": mv_names.get(r.model_version_id),
            "size": size.get(r.id, 0),
            "annotated": done.get(r.id, 0),
            "pushed_to": targets.get(r.id, []),
            "created_at": _iso(r.created_at),
        }
        for r in s.scalars(
            select(AnnotationRound)
            .where(AnnotationRound.project_id == pid)
            .order_by(AnnotationRound.number.desc())
        )
    ]


def pipeline_rows(s: Session, pid: int, limit: int = RECENT) -> list[dict[str, Any]]:
    rows = []
    for run, tr in s.execute(
        select(PipelineRun, TrainingRun)
        .outerjoin(TrainingRun, TrainingRun.id == PipelineRun.training_run_id)
        .where(PipelineRun.project_id == pid)
        .order_by(PipelineRun.id.desc())
        .limit(limit)
    ):
        rows.append(pipeline_row(run, tr))
    return rows


def pipeline_row(run: PipelineRun, tr: TrainingRun | None) -> dict[str, Any]:
    progress = dict(tr.progress or {}) if tr is not None else {}
    return {
        "id": run.id,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "status": run.status,
        "stage": run.stage,
        "message": run.message,
        "training": None
        if tr is None
        else {
            "id": tr.id,
            "status": tr.status,
            "epoch": progress.get("epoch"),
            "epochs": progress.get("epochs"),
            "loss": progress.get("loss"),
            "curve": progress.get("curve") or [],
        },
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "finished_at": _iso(run.finished_at),
    }


def webhook_rows(s: Session, pid: int, limit: int = RECENT) -> list[dict[str, Any]]:
    return [
        {
            "id": ev.id,
            "action": ev.action,
            "ls_project": ev.ls_project,
            "annotations": ev.annotations,
            "pipeline_run_id": ev.pipeline_run_id,
            "received_at": _iso(ev.received_at),
        }
        for ev in s.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.project_id == pid)
            .order_by(WebhookEvent.id.desc())
            .limit(limit)
        )
    ]


def project_page(s: Session, name: str) -> dict[str, Any]:
    p = get_project(s, name)
    models = model_rows(s, p.id)
    return {
        "project": {"name": p.name, "task": p.task, "labels": label_names(p)},
        "counts": image_counts(s, p.id),
        "growth": label_growth(s, p.id),
        "datasets": dataset_diffs(s, p.id),
        "models": models,
        "promotions": promotions(s, p.id),
        "rounds": round_rows(s, p.id),
        "pipelines": pipeline_rows(s, p.id),
        "webhooks": webhook_rows(s, p.id),
    }


def pushed_tasks(s: Session, round_id: int) -> dict[int, list[dict[str, str]]]:
    """Where each image of a round went: per image, (target, destination, external id)."""
    out: dict[int, list[dict[str, str]]] = defaultdict(list)
    for image_id, target, destination, ext in s.execute(
        select(PushItem.image_id, Push.target, Push.destination, PushItem.external_task_id)
        .join(Push, Push.id == PushItem.push_id)
        .where(Push.round_id == round_id)
        .order_by(Push.id)
    ):
        out[image_id].append({"target": target, "destination": destination, "task": ext})
    return out


def get_model_version(s: Session, name: str) -> ModelVersion:
    mv = s.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if mv is None:
        raise NotFoundError(f"no model version named {name!r}")
    return mv
