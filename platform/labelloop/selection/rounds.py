"""Selection: a strategy over stored scores -> an annotation round of ordered image ids.

The stage owns the rules every strategy must obey: never re-select an image that is
labelled or already out with annotators in an open round, respect the budget, and deal
the round into per-annotator batches. Strategies (see `strategies.py`) only rank."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.context import Context
from labelloop.datasets.freeze import current_annotations
from labelloop.db.models import (
    AnnotationRound,
    DatasetVersion,
    Image,
    ModelVersion,
    RoundItem,
    Score,
)
from labelloop.errors import InputError, NotFoundError
from labelloop.imaging import decode_image
from labelloop.kinds import kind_entry
from labelloop.projects import get_project
from labelloop.registry import find_model
from labelloop.scoring.embeddings import load_embeddings, pixel_embedding
from labelloop.scoring.stage import default_method, labelled_image_ids, pool_image_ids
from labelloop.selection.guard import FALLBACK, control_size, draw_control, guard_report
from labelloop.selection.registry import check_params, get_strategy
from labelloop.selection.strategies import Candidates


class NothingToSelect(InputError):
    """The pool is empty: every image is labelled or out with annotators already."""


@dataclass
class RoundResult:
    round_id: int
    number: int
    created: bool
    strategy: str
    items: list[tuple[int, int, float | None]]  # (image_id, rank, score)
    batches: dict[int, int] | None = None  # image_id -> annotator batch (1..)
    control: list[int] = field(default_factory=list)  # the random control slice's images
    guard: dict[str, Any] | None = None  # the guard's evidence and decision (`guard.py`)


def _hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _close_finished_rounds(s, project_id: int, labelled: set[int]) -> None:
    for rnd in s.scalars(
        select(AnnotationRound).where(
            AnnotationRound.project_id == project_id, AnnotationRound.status == "open"
        )
    ):
        ids = s.scalars(select(RoundItem.image_id).where(RoundItem.round_id == rnd.id)).all()
        if ids and all(i in labelled for i in ids):
            rnd.status = "done"


# A parameter every strategy takes: while the scoring model trained on fewer images than
# this, select at random.
RANDOM_BELOW = "random_below"


def _random_below(value: Any) -> int:
    """`random_below`, checked: a whole number of images (0 or absent: off)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InputError(f"{RANDOM_BELOW} must be a whole number of images, got {value!r}")
    if value < 0:
        raise InputError(f"{RANDOM_BELOW} must be at least 0, got {value}")
    return int(value)


def trained_on(s: Session, model_version_id: int | None) -> int:
    """How many images the model version trained on: its dataset version's train split,
    as the freeze counted it (labelled test and validation images teach it nothing). 0
    without a model."""
    mv = s.get(ModelVersion, model_version_id) if model_version_id is not None else None
    if mv is None:
        return 0
    stats = s.get(DatasetVersion, mv.dataset_version_id).stats or {}
    return int(stats.get("splits", {}).get("train", 0))


def default_strategy(ctx: Context, project_name: str) -> str:
    """The strategy a project's rounds use unless told: its kind's (`labelloop.kinds`)."""
    with ctx.db.session() as s:
        return kind_entry(get_project(s, project_name).task).default_strategy


def select_round(
    ctx: Context,
    project_name: str,
    *,
    budget: int,
    strategy: str | None = None,
    model_version_id: int | None = None,
    method: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    params: dict[str, Any] | None = None,
    control_fraction: float = 0.0,
) -> RoundResult:
    """A new round of at most `budget` images, or the open round these parameters already
    made. Without `strategy`, the project's kind names it. `batch_size` deals the round
    into per-annotator batches round-robin in rank order, so every annotator gets a share
    of the least confident images.

    With `control_fraction`, that share of the budget is a random control slice (ranked
    after the strategy's picks), and the guard first weighs the control slices of earlier
    labelled rounds: when the strategy's picks proved easier for the model than random
    ones, this round uses random selection instead (see `guard.py`; both in the result).

    `params` may hold `random_below` whatever the strategy: while the model that scores
    the pool trained on fewer images than that (its train split; none without a model),
    the round is drawn at random, since a model trained on a handful ranks the pool
    little better than chance and its first picks can cost more than they teach
    (BENCHMARKS.md, BCCD warm loops)."""
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    strategy = strategy or default_strategy(ctx, project_name)
    n_control = control_size(budget, control_fraction)
    params = dict(params or {})
    below = _random_below(params.pop(RANDOM_BELOW, None))
    too_few = None  # the strategy put aside while its model has learned from too few
    if below and strategy != FALLBACK:
        with ctx.db.session() as s:
            mv = model_version_id
            mv = mv if mv is not None else find_model(s, get_project(s, project_name).id)
            if trained_on(s, mv) < below:
                too_few, strategy, params = strategy, FALLBACK, {}  # the fallback's defaults
    report, requested = None, strategy
    if control_fraction > 0 and strategy != FALLBACK:
        with ctx.db.session() as s:
            project = get_project(s, project_name)
            labelled = labelled_image_ids(s, project.id)
            report = guard_report(ctx, s, project.id, labelled, strategy)
        requested, strategy = strategy, report.policy
        if strategy != requested:
            params = {}  # the fallback's own defaults
    if strategy == FALLBACK:
        n_control = 0  # random against random teaches nothing
    strat = get_strategy(strategy)
    params = check_params(strat, dict(params or {}))
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        method = method or default_method(project.task)
        if model_version_id is None:
            model_version_id = find_model(s, project.id)
        if model_version_id is None and strat.needs_model:
            raise InputError(
                f"strategy {strategy!r} needs a trained model; train first, or start cold "
                "with --strategy random or coreset"
            )
        key = {
            "strategy": strategy,
            "budget": budget,
            "model_version_id": model_version_id,
            "method": method if strat.needs_scores else None,
            "seed": seed,
        }
        if params:
            key["params"] = params
        if batch_size:
            key["batch_size"] = batch_size
        if n_control:
            key["control_fraction"] = control_fraction
        if report is not None and strategy != requested:
            key["switched_from"] = requested
        if below:
            key[RANDOM_BELOW] = below
        if too_few:
            key["switched_from"] = too_few
        labelled = labelled_image_ids(s, project.id)
        _close_finished_rounds(s, project.id, labelled)
        # The same parameters return the same round while it is open and holds images; once
        # it is done (or came out empty) the next call chains a new hash after it.
        params_hash = _hash(key)
        while (
            existing := s.scalar(
                select(AnnotationRound).where(
                    AnnotationRound.project_id == project.id,
                    AnnotationRound.params_hash == params_hash,
                )
            )
        ) is not None:
            rows = s.execute(
                select(RoundItem.image_id, RoundItem.rank, RoundItem.score, RoundItem.batch)
                .where(RoundItem.round_id == existing.id)
                .order_by(RoundItem.rank)
            ).all()
            if existing.status == "open" and rows:
                return RoundResult(
                    existing.id,
                    existing.number,
                    False,
                    strategy,
                    [(i, r, sc) for i, r, sc, _ in rows],
                    {i: b for i, _, _, b in rows},
                    list((existing.params or {}).get("control") or []),
                    (existing.params or {}).get("guard_report"),
                )
            params_hash = _hash({**key, "after_round": existing.id})
        out_now = set(
            s.scalars(
                select(RoundItem.image_id)
                .join(AnnotationRound)
                .where(AnnotationRound.project_id == project.id, AnnotationRound.status == "open")
            ).all()
        )
        pool = [i for i in pool_image_ids(s, project.id) if i not in out_now]
        cand = _candidates(ctx, s, project.id, pool, model_version_id, method, labelled)
        if strat.needs_scores and pool and not any(i in cand.scores for i in pool):
            raise InputError(
                f"no stored {method} scores for model version {model_version_id}; "
                "run the score stage first"
            )
        ranked = strat.rank(cand, budget - n_control, seed, params)[: budget - n_control]
        control = draw_control(pool, set(ranked), n_control, seed) if ranked else []
        ranked = ranked + control
        if not ranked:
            raise NothingToSelect(
                f"nothing to select in project {project_name!r}: every image is labelled or "
                "already out with annotators in an open round"
            )
        if len(set(ranked)) != len(ranked) or not set(ranked) <= set(pool):
            raise RuntimeError(f"strategy {strategy!r} returned ids outside the eligible pool")
        number = (
            s.scalar(
                select(func.max(AnnotationRound.number)).where(
                    AnnotationRound.project_id == project.id
                )
            )
            or 0
        ) + 1
        rnd = AnnotationRound(
            project_id=project.id,
            number=number,
            model_version_id=model_version_id,
            strategy=strategy,
            params={
                **key,
                **({"control": control} if control else {}),
                **({"guard_report": report.as_dict()} if report is not None else {}),
            },
            params_hash=params_hash,
        )
        s.add(rnd)
        s.flush()
        n_batches = math.ceil(len(ranked) / batch_size) if batch_size else 1
        items = [(i, rank, cand.scores.get(i)) for rank, i in enumerate(ranked, start=1)]
        batches = {i: (rank - 1) % n_batches + 1 for i, rank, _ in items}
        s.add_all(
            RoundItem(round_id=rnd.id, image_id=i, rank=r, score=sc, batch=batches[i])
            for i, r, sc in items
        )
        guard = report.as_dict() if report is not None else None
        return RoundResult(rnd.id, number, True, strategy, items, batches, control, guard)


def _candidates(
    ctx: Context,
    s: Session,
    project_id: int,
    pool: list[int],
    model_version_id: int | None,
    method: str,
    labelled: set[int],
) -> Candidates:
    scores: dict[int, float] = {}
    counts: dict[int, dict[str, int]] = {}
    details_of: dict[int, dict[str, Any]] = {}
    difficulty: dict[str, float] = {}
    intervals: dict[int, dict[str, dict[str, float]]] = {}
    if model_version_id is not None:
        mv = s.get(ModelVersion, model_version_id)
        difficulty = class_difficulty((mv.metrics or {}).get("val") or {}) if mv else {}
        for image_id, m, value, details in s.execute(
            select(Score.image_id, Score.method, Score.value, Score.details).where(
                Score.model_version_id == model_version_id, Score.image_id.in_(pool)
            )
        ):
            if m == method:
                scores[image_id] = value
            if details and "counts" in details:
                counts.setdefault(image_id, details["counts"])
            if details:
                details_of.setdefault(image_id, details)
            if details and "count_intervals" in details:
                intervals.setdefault(image_id, details["count_intervals"])
    labelled_counts: Counter[str] = Counter()
    for ann in current_annotations(s, project_id).values():
        labelled_counts.update(sh["label"] for sh in ann.shapes)

    def embeddings() -> tuple[np.ndarray, np.ndarray]:
        ids = [*pool, *sorted(labelled)]
        if model_version_id is not None:
            vecs = load_embeddings(s, model_version_id, ids)
            missing = [i for i in ids if i not in vecs]
            if missing:
                raise InputError(
                    f"model version {model_version_id} has no embeddings for {len(missing)} "
                    "images; run the score stage first"
                )
        else:  # cold start: no model yet, describe images by their pixels
            q = select(Image.id, Image.blob_key).where(Image.id.in_(ids))
            keys = {i: k for i, k in s.execute(q).all()}
            vecs = {
                i: pixel_embedding(decode_image(ctx.blobs.get_bytes(keys[i]), name=keys[i]))
                for i in ids
            }
        dim = len(next(iter(vecs.values()))) if vecs else 0
        pool_m = np.stack([vecs[i] for i in pool]) if pool else np.zeros((0, dim))
        lab = sorted(labelled)
        lab_m = np.stack([vecs[i] for i in lab]) if lab else np.zeros((0, dim))
        return pool_m, lab_m

    return Candidates(
        pool,
        scores,
        counts,
        dict(labelled_counts),
        embeddings,
        details=details_of,
        class_difficulty=difficulty,
        count_intervals=intervals,
    )


def class_difficulty(val_metrics: dict[str, Any]) -> dict[str, float]:
    """Per class, 1 - the model's validation score for it (AP50, Dice or F1, whichever the
    kind reports): what the detection-aware strategy weighs uncertainty by."""
    out = {}
    for name, entry in (val_metrics.get("per_class") or {}).items():
        if not isinstance(entry, dict):
            continue
        value = next((entry[k] for k in ("ap50", "dice", "f1") if entry.get(k) is not None), None)
        if value is not None:
            out[name] = float(np.clip(1.0 - value, 0.0, 1.0))
    return out


def latest_round(ctx: Context, project_name: str) -> int:
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        rid = s.scalar(
            select(AnnotationRound.id)
            .where(AnnotationRound.project_id == project.id)
            .order_by(AnnotationRound.number.desc())
            .limit(1)
        )
    if rid is None:
        raise NotFoundError(f"project {project_name!r} has no annotation round; run select first")
    return rid
