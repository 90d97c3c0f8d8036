"""The unlabeled pool and the scoring stage.

Scores are stored per (model version, image, method) with the prediction beside them
(its shapes as JSON in the blob store, per-class counts and the model's confidence), so
selection and push read stored results and never run the model again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from labelloop.context import Context
from labelloop.db.models import Annotation, Image, ModelVersion, Project, Score, SourceItem
from labelloop.domain import shapes_to_json
from labelloop.errors import NotFoundError
from labelloop.imaging import decode_image
from labelloop.registry import load_model_version
from labelloop.scoring import get_method


def default_method(task: str) -> str:
    """The scoring method a task's model kind names as its default."""
    from labelloop.training.kinds import get_kind

    return get_kind(task).default_scoring


def labelled_image_ids(s: Session, project_id: int) -> set[int]:
    return set(
        s.scalars(
            select(Annotation.image_id).where(
                Annotation.project_id == project_id, Annotation.state == "active"
            )
        ).all()
    )


def pool_image_ids(s: Session, project_id: int) -> list[int]:
    """Images of the project with no active annotation, in a stable order."""
    has_ann = exists().where(
        Annotation.image_id == SourceItem.image_id,
        Annotation.project_id == project_id,
        Annotation.state == "active",
    )
    return sorted(
        set(
            s.scalars(
                select(SourceItem.image_id).where(SourceItem.project_id == project_id, ~has_ann)
            ).all()
        )
    )


@dataclass
class ScoreResult:
    model_version_id: int
    method: str
    scored: int
    already: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


def score_pool(
    ctx: Context,
    model_version_id: int,
    *,
    method: str | None = None,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score every pool image not yet scored by this model version and method."""
    started = time.monotonic()
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        task = s.get(Project, mv.project_id).task
        method = method or default_method(task)
        scorer = get_method(method, task)
        pool = pool_image_ids(s, mv.project_id)
        done = set(
            s.scalars(
                select(Score.image_id).where(
                    Score.model_version_id == model_version_id, Score.method == method
                )
            ).all()
        )
        todo = [i for i in pool if i not in done]
        images = {
            img.id: (img.blob_key, img.sha256)
            for img in s.scalars(select(Image).where(Image.id.in_(todo)))
        }
    loaded = load_model_version(ctx, model_version_id)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        arrays = [decode_image(ctx.blobs.get_bytes(images[i][0]), name=images[i][0]) for i in chunk]
        preds = loaded.predict(arrays)
        rows = []
        for image_id, pred in zip(chunk, preds, strict=True):
            shapes_key, _ = ctx.blobs.put_bytes(
                json.dumps(shapes_to_json(pred.shapes), separators=(",", ":")).encode(),
                prefix="predictions",
                suffix=".json",
            )
            rows.append(
                Score(
                    model_version_id=model_version_id,
                    image_id=image_id,
                    method=method,
                    value=float(scorer.score_arrays(pred.arrays)),
                    details={
                        "shapes_key": shapes_key,
                        "counts": pred.counts,
                        "confidence": round(float(pred.confidence), 6),
                    },
                )
            )
        with ctx.db.session() as s:  # one transaction per chunk: a crash loses one chunk
            s.add_all(rows)
        if on_progress:
            on_progress(min(start + batch_size, len(todo)), len(todo))
    return ScoreResult(
        model_version_id, method, len(todo), len(done & set(pool)), time.monotonic() - started
    )
