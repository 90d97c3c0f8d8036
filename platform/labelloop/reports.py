"""Status of a project as plain data: the CLI renders it, `--json` prints it, the API
returns it. One set of functions, so every surface reports the same numbers."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from labelloop.context import Context
from labelloop.datasets.freeze import current_annotations
from labelloop.db.models import (
    Annotation,
    AnnotationRound,
    DatasetVersion,
    ModelVersion,
    Promotion,
    Push,
    PushItem,
    RoundItem,
    Score,
    SourceItem,
    TrainingRun,
)
from labelloop.domain import shapes_from_json
from labelloop.kinds import kind_entry
from labelloop.objects import (
    COUNT_TRUTH,
    RULE_BASIS,
    constant_count_warning,
    count_truth_of,
    evaluation_not_beaten,
    interval_coverage_warning,
    object_counts,
    thin_labels,
    thin_rules_warning,
)
from labelloop.projects import get_project, label_names


def project_status(ctx: Context, project_name: str, *, round_items: int = 20) -> dict:
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        pid = project.id
        image_ids = set(s.scalars(select(SourceItem.image_id).where(SourceItem.project_id == pid)))
        current = current_annotations(s, pid)
        per_class: Counter[str] = Counter()
        objects: Counter[str] = Counter()
        labels = label_names(project)
        counted = kind_entry(project.task).counted_kinds
        for ann in current.values():
            per_class.update(sh["label"] for sh in ann.shapes)
            objects.update(object_counts(shapes_from_json(ann.shapes), labels, counted))
        datasets = _datasets(s, pid)
        dv_numbers = {d["id"]: d["number"] for d in datasets}
        models = []
        for mv in s.scalars(
            select(ModelVersion).where(ModelVersion.project_id == pid).order_by(ModelVersion.id)
        ):
            fields = version_fields(mv, project.task)
            models.append(
                {
                    "id": mv.id,
                    **fields,
                    "stage": mv.stage,
                    "dataset_version": dv_numbers.get(mv.dataset_version_id),
                    "sha256": mv.sha256[:12],
                    "primary_metric": mv.metrics.get("primary_metric") or "mean_dice",
                    "count_relative_error": count_relative_errors(fields["metrics"]),
                    "train_seconds": mv.metrics.get("train_seconds"),
                    "epochs": mv.metrics.get("epochs"),
                    "scored_images": s.scalar(
                        select(func.count(Score.id)).where(Score.model_version_id == mv.id)
                    ),
                }
            )
        runs = [
            {
                "id": r.id,
                "status": r.status,
                "dataset_version": dv_numbers.get(r.dataset_version_id),
                "attempts": r.attempts,
                "progress": r.progress,
                "error": r.error,
                "duration_s": r.duration_s,
            }
            for r in s.scalars(
                select(TrainingRun).where(TrainingRun.project_id == pid).order_by(TrainingRun.id)
            )
        ]
        rounds = _rounds(s, pid, round_items)
        return {
            "project": {"name": project.name, "task": project.task, "labels": label_names(project)},
            "images": {
                "total": len(image_ids),
                "labelled": len(current),
                "unlabeled": len(image_ids - set(current)),
            },
            "annotations_per_class": dict(per_class.most_common()),
            # Annotated objects of the kinds the model learns: what counts are measured against.
            "objects_per_class": {lb: objects[lb] for lb in labels},
            "dataset_versions": datasets,
            "training_runs": runs,
            "model_versions": models,
            "rounds": rounds,
        }


def version_fields(mv: ModelVersion, task: str) -> dict:
    """What every listing of a model version carries and its warnings
    (`model_warnings`) read: name, test metrics, what its counts were measured against,
    the annotated objects per label its instance rules rest on (instance mode), and the
    count interval margins chosen on validation (None: the intervals were not calibrated)."""
    test = mv.metrics.get("test") or {}
    return {
        "name": mv.name,
        "metrics": test,
        "count_truth": count_truth_of(test, task),
        "rule_objects": mv.recipe.get("instance_rule_objects"),
        "interval_margin": mv.recipe.get("count_interval_margin"),
    }


def count_relative_errors(metrics: dict) -> dict[str, float | None]:
    """Per class |predicted - true| / true of the split's totals, from stored evaluation
    metrics (None where the class has no true object or no counts were stored)."""
    out: dict[str, float | None] = {}
    for lb, m in (metrics.get("per_class") or {}).items():
        m = m or {}
        # Segmentation stores true_count / pred_count, detection n_true / n_pred.
        true, pred = m.get("true_count", m.get("n_true")), m.get("pred_count", m.get("n_pred"))
        out[lb] = round(abs(pred - true) / true, 4) if true and pred is not None else None
    return out


def count_warning(row: dict) -> str | None:
    """Why a model version's stored count metrics must not be compared with new ones."""
    if row.get("count_truth", COUNT_TRUTH) == COUNT_TRUTH:
        return None
    return (
        f"{row.get('name', 'model')}: count metrics were stored against connected components "
        "of the rasterised truth (touching cells merged), not annotated objects; "
        "retrain or re-evaluate before comparing counts"
    )


def rule_basis_warning(row: dict) -> str | None:
    """Why a model version's counts of some classes may be off: its instance rules rest on
    too few annotated objects of them (`objects.thin_labels`, as the version recorded)."""
    thin = thin_labels(row.get("rule_objects") or {})
    return thin_rules_warning(row.get("name", "model"), thin, RULE_BASIS) if thin else None


def constant_warning(row: dict) -> str | None:
    """Why a model version's counts of some classes show nothing: on its test split they
    are no closer to the annotations than a constant count per image
    (`objects.evaluation_not_beaten`)."""
    if row.get("count_truth", COUNT_TRUTH) != COUNT_TRUTH:
        return None  # old count metrics; `count_warning` says so
    beaten_not = evaluation_not_beaten(row.get("metrics") or {})
    return constant_count_warning(row.get("name", "model"), beaten_not) if beaten_not else None


def model_warnings(row: dict) -> list[str]:
    """What a listing of model versions says under its table about this one."""
    found = (
        count_warning(row),
        rule_basis_warning(row),
        constant_warning(row),
        interval_warning(row),
    )
    return [w for w in found if w]


def interval_warning(row: dict) -> str | None:
    """Why a model version's count intervals must not be read at their word: on its test
    split they held the annotated count far less often than 95 %."""
    calibrated = bool(row.get("interval_margin"))
    return interval_coverage_warning(row.get("name", "model"), row.get("metrics") or {}, calibrated)


def _datasets(s, pid: int) -> list[dict]:
    return [
        {
            "id": dv.id,
            "number": dv.number,
            "hash": dv.content_hash[:12],
            "content_hash": dv.content_hash,
            "parent_id": dv.parent_id,
            "images": dv.stats.get("images"),
            "splits": dv.stats.get("splits"),
            "shapes": dv.stats.get("shapes"),
            "created_at": dv.created_at.isoformat(),
        }
        for dv in s.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.project_id == pid)
            .order_by(DatasetVersion.number)
        )
    ]


def _rounds(s, pid: int, round_items: int) -> list[dict]:
    rounds = []
    for rnd in s.scalars(
        select(AnnotationRound)
        .where(AnnotationRound.project_id == pid)
        .order_by(AnnotationRound.number)
    ):
        items = s.execute(
            select(RoundItem.image_id, RoundItem.rank, RoundItem.score)
            .where(RoundItem.round_id == rnd.id)
            .order_by(RoundItem.rank)
            .limit(round_items)
        ).all()
        counts = {}
        if rnd.model_version_id:
            for sc in s.scalars(
                select(Score).where(
                    Score.model_version_id == rnd.model_version_id,
                    Score.image_id.in_([i for i, _, _ in items]),
                )
            ):
                counts[sc.image_id] = sc.details.get("counts", {})
        pushes = [
            {
                "id": p.id,
                "target": p.target,
                "destination": p.destination,
                "tasks": s.scalar(select(func.count(PushItem.id)).where(PushItem.push_id == p.id)),
            }
            for p in s.scalars(select(Push).where(Push.round_id == rnd.id).order_by(Push.id))
        ]
        rounds.append(
            {
                "id": rnd.id,
                "number": rnd.number,
                "strategy": rnd.strategy,
                "status": rnd.status,
                "model_version_id": rnd.model_version_id,
                "size": s.scalar(
                    select(func.count(RoundItem.id)).where(RoundItem.round_id == rnd.id)
                ),
                "items": [
                    {"image_id": i, "rank": r, "score": sc, "predicted_counts": counts.get(i)}
                    for i, r, sc in items
                ],
                "pushes": pushes,
                "progress": round_progress(s, rnd.id),
            }
        )
    return rounds


def round_progress(s, round_id: int) -> dict[str, int]:
    """How far annotators are with a round: images sent (pushed anywhere), annotated
    (an active annotation), skipped (only skipped ones) and left (neither)."""
    images = set(s.scalars(select(RoundItem.image_id).where(RoundItem.round_id == round_id)))
    sent = set(
        s.scalars(
            select(PushItem.image_id)
            .join(Push, Push.id == PushItem.push_id)
            .where(Push.round_id == round_id)
        )
    )
    states: dict[int, set[str]] = {}
    for image_id, state in s.execute(
        select(Annotation.image_id, Annotation.state).where(
            Annotation.image_id.in_(images), Annotation.state.in_(("active", "skipped"))
        )
    ):
        states.setdefault(image_id, set()).add(state)
    annotated = sum("active" in v for v in states.values())
    skipped = sum(v == {"skipped"} for v in states.values())
    return {
        "images": len(images),
        "sent": len(sent & images),
        "annotated": annotated,
        "skipped": skipped,
        "left": len(images) - annotated - skipped,
    }


def dataset_versions(ctx: Context, project_name: str) -> list[dict]:
    """A project's frozen dataset versions, oldest first."""
    with ctx.db.session() as s:
        return _datasets(s, get_project(s, project_name).id)


def annotation_rounds(ctx: Context, project_name: str, *, items: int = 20) -> list[dict]:
    """A project's annotation rounds with their first `items` images and pushes."""
    with ctx.db.session() as s:
        return _rounds(s, get_project(s, project_name).id, items)


def model_versions(ctx: Context, project_name: str) -> list[dict]:
    """A project's model versions: stage, test metric, dataset version, recipe hash, and
    why each reached its stage."""
    with ctx.db.session() as s:
        p = get_project(s, project_name)
        rows = []
        for mv in s.scalars(
            select(ModelVersion).where(ModelVersion.project_id == p.id).order_by(ModelVersion.id)
        ):
            dv = s.get(DatasetVersion, mv.dataset_version_id)
            run = s.get(TrainingRun, mv.training_run_id)
            last = s.scalar(
                select(Promotion)
                .where(Promotion.model_version_id == mv.id)
                .order_by(Promotion.id.desc())
                .limit(1)
            )
            metric = mv.metrics.get("primary_metric") or "mean_dice"
            rows.append(
                {
                    "id": mv.id,
                    **version_fields(mv, p.task),
                    "stage": mv.stage,
                    "task": mv.recipe.get("task", p.task),
                    "dataset_version": dv.number if dv else None,
                    "dataset_version_id": mv.dataset_version_id,
                    "training_run_id": mv.training_run_id,
                    "recipe_hash": run.recipe_hash if run else None,
                    "sha256": mv.sha256,
                    "metric": metric,
                    "test": (mv.metrics.get("test") or {}).get(metric),
                    "val_metrics": mv.metrics.get("val") or {},
                    "comparison": mv.metrics.get("comparison"),
                    "train_seconds": mv.metrics.get("train_seconds"),
                    "epochs": mv.metrics.get("epochs"),
                    "resumed": mv.metrics.get("resumed"),
                    "stage_reason": last.reason if last else None,
                    "forced": last.forced if last else None,
                    "created_at": mv.created_at.isoformat(),
                }
            )
    return rows
