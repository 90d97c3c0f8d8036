"""Selection: a strategy over stored scores -> an annotation round of ordered image ids.

Strategies are tiny named objects (MONAI Label style) that only rank candidates; the
stage around them owns the rules every strategy must obey: never re-select an image that
is labelled or already out with annotators in an open round, and respect the budget."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import ClassVar, Protocol

from sqlalchemy import func, select

from labelloop.context import Context
from labelloop.db.models import AnnotationRound, ModelVersion, RoundItem, Score
from labelloop.errors import InputError, NotFoundError
from labelloop.pool import default_method, labelled_image_ids, pool_image_ids
from labelloop.projects import get_project


@dataclass(frozen=True)
class Candidate:
    image_id: int
    score: float | None


class Strategy(Protocol):
    name: ClassVar[str]
    needs_scores: ClassVar[bool]

    def rank(self, candidates: list[Candidate], budget: int, seed: int) -> list[Candidate]: ...


class RandomStrategy:
    name = "random"
    needs_scores = False

    def rank(self, candidates: list[Candidate], budget: int, seed: int) -> list[Candidate]:
        pool = sorted(candidates, key=lambda c: c.image_id)
        return random.Random(seed).sample(pool, min(budget, len(pool)))


class UncertaintyStrategy:
    """Top-k by stored uncertainty (higher = less confident); ties broken by image id."""

    name = "uncertainty"
    needs_scores = True

    def rank(self, candidates: list[Candidate], budget: int, seed: int) -> list[Candidate]:
        scored = [c for c in candidates if c.score is not None]
        return sorted(scored, key=lambda c: (-c.score, c.image_id))[:budget]


STRATEGIES: dict[str, Strategy] = {s.name: s() for s in (RandomStrategy, UncertaintyStrategy)}


class NothingToSelect(InputError):
    """The pool is empty: every image is labelled or out with annotators already."""


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InputError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        ) from None


@dataclass
class RoundResult:
    round_id: int
    number: int
    created: bool
    strategy: str
    items: list[tuple[int, int, float | None]]  # (image_id, rank, score)


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


def select_round(
    ctx: Context,
    project_name: str,
    *,
    budget: int,
    strategy: str = "uncertainty",
    model_version_id: int | None = None,
    method: str | None = None,
    seed: int = 0,
) -> RoundResult:
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}")
    strat = get_strategy(strategy)
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        method = method or default_method(project.task)
        if model_version_id is None:
            model_version_id = s.scalar(
                select(ModelVersion.id)
                .where(ModelVersion.project_id == project.id)
                .order_by((ModelVersion.stage == "production").desc(), ModelVersion.id.desc())
                .limit(1)
            )
        if model_version_id is None and strat.needs_scores:
            raise InputError(
                f"strategy {strategy!r} needs a trained model; train first or use --strategy random"
            )
        params = {
            "strategy": strategy,
            "budget": budget,
            "model_version_id": model_version_id,
            "method": method if strat.needs_scores else None,
            "seed": seed,
        }
        labelled = labelled_image_ids(s, project.id)
        _close_finished_rounds(s, project.id, labelled)
        # The same parameters return the same round while it is open and holds images; once
        # it is done (or came out empty) the next call chains a new hash after it.
        params_hash = _hash(params)
        while (
            existing := s.scalar(
                select(AnnotationRound).where(
                    AnnotationRound.project_id == project.id,
                    AnnotationRound.params_hash == params_hash,
                )
            )
        ) is not None:
            items = s.execute(
                select(RoundItem.image_id, RoundItem.rank, RoundItem.score)
                .where(RoundItem.round_id == existing.id)
                .order_by(RoundItem.rank)
            ).all()
            if existing.status == "open" and items:
                return RoundResult(
                    existing.id, existing.number, False, strategy, [tuple(r) for r in items]
                )
            params_hash = _hash({**params, "after_round": existing.id})
        out_now = set(
            s.scalars(
                select(RoundItem.image_id)
                .join(AnnotationRound)
                .where(AnnotationRound.project_id == project.id, AnnotationRound.status == "open")
            ).all()
        )
        pool = [i for i in pool_image_ids(s, project.id) if i not in out_now]
        scores = {}
        if model_version_id is not None:
            scores = dict(
                s.execute(
                    select(Score.image_id, Score.value).where(
                        Score.model_version_id == model_version_id, Score.method == method
                    )
                ).all()
            )
        if strat.needs_scores and pool and not any(i in scores for i in pool):
            raise InputError(
                f"no stored {method} scores for model version {model_version_id}; "
                "run the score stage first"
            )
        ranked = strat.rank([Candidate(i, scores.get(i)) for i in pool], budget, seed)
        if not ranked:
            raise NothingToSelect(
                f"nothing to select in project {project_name!r}: every image is labelled or "
                "already out with annotators in an open round"
            )
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
            params=params,
            params_hash=params_hash,
        )
        s.add(rnd)
        s.flush()
        items = [(c.image_id, rank, c.score) for rank, c in enumerate(ranked, start=1)]
        s.add_all(RoundItem(round_id=rnd.id, image_id=i, rank=r, score=sc) for i, r, sc in items)
        return RoundResult(rnd.id, number, True, strategy, items)


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
