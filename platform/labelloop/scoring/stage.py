"""The unlabeled pool and the scoring stage.

Scores are stored per (model version, image, method) with the prediction beside them
(its shapes as JSON in the blob store, per-class counts and the model's confidence), so
selection and push read stored results and never run the model again. Embeddings are
stored per (model version, image) for the diversity strategies."""

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
from labelloop.kinds import kind_entry
from labelloop.objects import count_intervals
from labelloop.registry import load_model_version
from labelloop.scoring import get_method
from labelloop.scoring.detection import box_statistics
from labelloop.scoring.embeddings import add_embeddings, stored_ids


def default_method(task: str) -> str:
    """The scoring method a task's kind names as its default (see `labelloop.kinds`)."""
    return kind_entry(task).default_scoring


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
    methods: list[str]
    scored: int  # pool images that got at least one new score
    already: int  # pool images every method had scored before
    seconds: float
    embedded: int = 0  # images (pool and labelled) whose embedding was added

    @property
    def method(self) -> str:
        return self.methods[0]

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


def scoring_plan(
    ctx: Context, model_version_id: int, methods: list[str] | None = None
) -> tuple[list[str], list[int]]:
    """The methods (default: the task's) and the pool images some of them have not scored."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        task = s.get(Project, mv.project_id).task
        methods = list(dict.fromkeys(methods or [default_method(task)]))
        for m in methods:
            get_method(m, task)  # a typo fails before any work, listing valid names
        pool = pool_image_ids(s, mv.project_id)
        done = _done(s, model_version_id, methods)
    return methods, [i for i in pool if any(i not in done[m] for m in methods)]


def embedding_plan(ctx: Context, model_version_id: int) -> list[int]:
    """Labelled images this model version has no embedding for (pool images get theirs
    while they are scored): diversity strategies measure distance to the labelled set."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        have = stored_ids(s, model_version_id)
        return sorted(i for i in labelled_image_ids(s, mv.project_id) if i not in have)


def _done(s: Session, model_version_id: int, methods: list[str]) -> dict[str, set[int]]:
    rows = s.execute(
        select(Score.method, Score.image_id).where(
            Score.model_version_id == model_version_id, Score.method.in_(methods)
        )
    ).all()
    done: dict[str, set[int]] = {m: set() for m in methods}
    for m, i in rows:
        done[m].add(i)
    return done


def score_pool(
    ctx: Context,
    model_version_id: int,
    *,
    method: str | None = None,
    methods: list[str] | None = None,
    image_ids: list[int] | None = None,
    batch_size: int = 8,
    embed: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score every pool image not yet scored by this model version and method(s).

    One prediction per image serves every method (multi-pass methods add the passes they
    need, once per mode). `image_ids` limits the work to a shard of the pool (the Celery
    score task splits large pools this way). With `embed`, the pooled encoder features of
    pool and labelled images are stored too, for diversity strategies. One transaction
    per chunk: a crash loses at most one chunk, and re-running fills in what is missing.
    """
    started = time.monotonic()
    methods, todo = scoring_plan(ctx, model_version_id, methods or ([method] if method else None))
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        task = s.get(Project, mv.project_id).task
        pool = set(pool_image_ids(s, mv.project_id))
        if image_ids is not None:
            todo = [i for i in todo if i in set(image_ids)]
        done = _done(s, model_version_id, methods)
        to_embed: list[int] = []
        if embed:
            have = stored_ids(s, model_version_id)
            scope = pool | labelled_image_ids(s, mv.project_id)
            if image_ids is not None:
                scope &= set(image_ids)
            to_embed = sorted(i for i in scope if i not in have)
        blob_of = {
            img.id: img.blob_key
            for img in s.scalars(select(Image).where(Image.id.in_(set(todo) | set(to_embed))))
        }
    scorers = {m: get_method(m, task) for m in methods}
    loaded = load_model_version(ctx, model_version_id)
    if embed and loaded.kind.embed is None:
        to_embed = []
    pending_embed = set(to_embed)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        arrays = [decode_image(ctx.blobs.get_bytes(blob_of[i]), name=blob_of[i]) for i in chunk]
        preds = loaded.predict(arrays)
        views = _views_for(loaded, arrays, scorers.values())
        rows = []
        for j, (image_id, pred) in enumerate(zip(chunk, preds, strict=True)):
            details = _prediction_details(
                ctx, pred, loaded.labels, loaded.recipe.count_interval_margin
            )
            for m, scorer in scorers.items():
                if image_id in done[m]:
                    continue
                value = scorer.score_prediction(pred, views.get(scorer.passes, {}).get(j, ()))
                rows.append(
                    Score(
                        model_version_id=model_version_id,
                        image_id=image_id,
                        method=m,
                        value=float(value),
                        details=details,
                    )
                )
        vectors = None
        embed_now = [i for i in chunk if i in pending_embed]
        if embed_now:
            vectors = loaded.embed([arrays[chunk.index(i)] for i in embed_now])
            pending_embed -= set(embed_now)
        with ctx.db.session() as s:
            s.add_all(rows)
            if vectors is not None:
                add_embeddings(s, model_version_id, embed_now, vectors)
        if on_progress:
            on_progress(min(start + batch_size, len(todo)), len(todo))
    rest = sorted(pending_embed)  # labelled images: embeddings only
    for start in range(0, len(rest), batch_size):
        chunk = rest[start : start + batch_size]
        arrays = [decode_image(ctx.blobs.get_bytes(blob_of[i]), name=blob_of[i]) for i in chunk]
        vectors = loaded.embed(arrays)
        with ctx.db.session() as s:
            add_embeddings(s, model_version_id, chunk, vectors)
    already = len([i for i in pool if all(i in done[m] for m in methods)])
    if image_ids is not None:
        already = len([i for i in image_ids if i in pool and all(i in done[m] for m in methods)])
    return ScoreResult(
        model_version_id, methods, len(todo), already, time.monotonic() - started, len(to_embed)
    )


def _views_for(loaded, arrays: list, scorers) -> dict[str, dict[int, list]]:
    """Views per pass mode the scorers need: {mode: {index in chunk: [View, ...]}}."""
    need: dict[str, int] = {}
    for sc in scorers:
        if sc.passes:
            need[sc.passes] = max(need.get(sc.passes, 0), sc.n_passes)
    out: dict[str, dict[int, list]] = {}
    for mode, n in need.items():
        out[mode] = dict(enumerate(loaded.views(arrays, mode, n)))
    return out


def _prediction_details(
    ctx: Context, pred, labels: list[str], margin: dict[str, float] | None
) -> dict:
    shapes_key, _ = ctx.blobs.put_bytes(
        json.dumps(shapes_to_json(pred.shapes), separators=(",", ":")).encode(),
        prefix="predictions",
        suffix=".json",
    )
    return {
        "shapes_key": shapes_key,
        "counts": pred.counts,
        # Per label expected count and ~95 % interval from the objects' confidences: what
        # `labelloop count` shows and the `count_uncertainty` strategy ranks by.
        "count_intervals": count_intervals(pred.shapes, list(pred.counts), margin=margin),
        "confidence": round(float(pred.confidence), 6),
        **box_statistics(pred.arrays, labels),
    }
