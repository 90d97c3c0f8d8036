"""Selection strategies: tiny named objects that only rank candidates (MONAI Label style).

A strategy sees the eligible pool images with what the scoring stage stored for them
(uncertainty, predicted counts, embeddings) and returns at most `budget` image ids in the
order annotators should take them. The rules every strategy obeys (never an image that
is labelled or already out with annotators, the budget) are enforced around it, in
`rounds.select_round`.

- `random` (needs nothing): a seeded uniform sample; the baseline, and a cold start.
- `uncertainty` (scores): the top `budget` by stored uncertainty.
- `power` (scores): a draw weighted by uncertainty, top-k made stochastic.
- `coreset` (embeddings, or pixels): k-center greedy, far from everything labelled.
- `hybrid` (scores + embeddings): the `prefilter` x budget most uncertain, then k-center.
- `class_balance` (scores + counts): uncertainty boosted for predicted rare classes.
- `count_uncertainty` (scores + count intervals): the widest predicted count intervals
  first, the images whose cell counts the model is least sure of.

The strategies that combine signals (BADGE-style, Cluster-Margin-style, detection-aware,
typicality, count uncertainty) are in `combined.py`; the name registry in `registry.py`.

`coreset` without a model (cold start) embeds images by their pixel statistics.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from labelloop.errors import InputError
from labelloop.selection.kcenter import kcenter_greedy


@dataclass
class Candidates:
    """The eligible pool as a strategy sees it. `embeddings()` loads lazily (pool rows in
    the order of `ids`, then the labelled images' rows), since only diversity needs them."""

    ids: list[int]
    scores: dict[int, float] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    labelled_counts: dict[str, int] = field(default_factory=dict)
    embeddings: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
    # Stored score details per pool image (counts, per-class box statistics).
    details: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Per class, 1 - the model's validation score for it (AP50, Dice or F1): how hard it is.
    class_difficulty: dict[str, float] = field(default_factory=dict)
    # Per image, per label {"expected", "low", "high"} (`objects.count_intervals`).
    count_intervals: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)


class Strategy(Protocol):
    name: ClassVar[str]
    needs_scores: ClassVar[bool]
    needs_model: ClassVar[bool]
    # Reads image embeddings (the score stage stores them; a cold start uses pixels).
    needs_embeddings: ClassVar[bool]
    defaults: ClassVar[dict[str, Any]]

    def rank(
        self, cand: Candidates, budget: int, seed: int, params: dict[str, Any]
    ) -> list[int]: ...


def by_uncertainty(cand: Candidates) -> list[int]:
    scored = [i for i in cand.ids if i in cand.scores]
    return sorted(scored, key=lambda i: (-cand.scores[i], i))


def shortlist_size(strategy: Any, params: dict[str, Any], budget: int) -> int:
    """How many of the best-ranked images a prefiltering strategy (`hybrid`,
    `cluster_margin`, `detection_aware`) diversifies over: `prefilter` x budget."""
    factor = float(params.get("prefilter", strategy.defaults["prefilter"]))
    if factor < 1:
        raise InputError(f"{strategy.name}: prefilter must be at least 1, got {factor}")
    return max(budget, round(factor * budget))


def embeddings_of(cand: Candidates, name: str) -> tuple[np.ndarray, np.ndarray]:
    if cand.embeddings is None:
        raise InputError(f"strategy {name!r} needs image embeddings; run the score stage first")
    return cand.embeddings()


class RandomStrategy:
    name = "random"
    needs_scores = False
    needs_model = False
    needs_embeddings = False
    defaults: ClassVar[dict[str, Any]] = {}

    def rank(self, cand, budget, seed, params):
        return random.Random(seed).sample(sorted(cand.ids), min(budget, len(cand.ids)))


class UncertaintyStrategy:
    """Top-k by stored uncertainty (higher = less confident); ties broken by image id."""

    name = "uncertainty"
    needs_scores = True
    needs_model = True
    needs_embeddings = False
    defaults: ClassVar[dict[str, Any]] = {}

    def rank(self, cand, budget, seed, params):
        return by_uncertainty(cand)[:budget]


class PowerStrategy:
    """Power acquisition (Kirsch et al. 2023, stochastic batch acquisition): a draw without
    replacement with probability proportional to uncertainty ** `beta` (Gumbel top-k).

    Top-k trusts a small score difference as much as a large one: where every image is
    about as doubtful as the next (the slices of one stack) it still takes one corner of
    the pool, the most doubtful neighbours, and on ISBI that fell below random. A draw
    weighted by the scores leans to doubt as far as the scores differ and is close to
    random where they do not; `beta` = 0 is random, a large `beta` is top-k. The paper's
    beta 1 was level with random on both benchmark pools (ISBI and heterogeneous
    smears); 4 was level on ISBI and ahead on the smears (BENCHMARKS.md)."""

    name = "power"
    needs_scores = True
    needs_model = True
    needs_embeddings = False
    defaults: ClassVar[dict[str, Any]] = {"beta": 4.0}

    def rank(self, cand, budget, seed, params):
        beta = params.get("beta", self.defaults["beta"])
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            beta = float("nan")
        if not 0 <= beta < float("inf"):
            raise InputError(f"power: beta must be a number >= 0, got {params.get('beta')!r}")
        scored = sorted(i for i in cand.ids if i in cand.scores)
        s = np.array([cand.scores[i] for i in scored], float)
        if not np.isfinite(s).all() or (s < 0).any():
            raise InputError("power: uncertainty scores must be finite and >= 0")
        # A zero score is the least likely pick, not an impossible one (log 0).
        noise = np.random.default_rng(seed).gumbel(size=len(s))
        keys = beta * np.log(np.maximum(s, 1e-12)) + noise
        return [scored[k] for k in np.argsort(-keys, kind="stable")[:budget]]


class CoresetStrategy:
    """k-center greedy over embeddings, the labelled images as initial centres."""

    name = "coreset"
    needs_scores = False
    needs_model = False
    needs_embeddings = True
    defaults: ClassVar[dict[str, Any]] = {}

    def rank(self, cand, budget, seed, params):
        pool, labelled = embeddings_of(cand, self.name)
        picks = kcenter_greedy(pool, labelled, budget, seed=seed)
        return [cand.ids[p] for p in picks]


class HybridStrategy:
    """Uncertainty first, diversity second: of the `prefilter` x budget least confident
    images, the k-center greedy batch. Pure top-k tends to fill a round with near
    duplicates (ten fields of the same blurry slide); this keeps the doubt and drops the
    duplicates."""

    name = "hybrid"
    needs_scores = True
    needs_model = True
    needs_embeddings = True
    defaults: ClassVar[dict[str, Any]] = {"prefilter": 3.0}

    def rank(self, cand, budget, seed, params):
        short = by_uncertainty(cand)[: shortlist_size(self, params, budget)]
        pool, labelled = embeddings_of(cand, self.name)
        row = {i: r for r, i in enumerate(cand.ids)}
        picks = kcenter_greedy(pool[[row[i] for i in short]], labelled, budget, seed=seed)
        return [short[p] for p in picks]


class ClassBalanceStrategy:
    """Uncertainty x (1 + weight x rarity of what the image is predicted to hold).

    Rarity of a class is 1 / its share of the labelled shapes, scaled so the rarest class
    is 1; an image's bonus is the count-weighted mean rarity of its predicted cells. A
    field predicted to hold a WBC or platelets among RBCs gets up to (1 + weight) times
    its uncertainty, so rare classes reach annotators before the model has learned them.
    """

    name = "class_balance"
    needs_scores = True
    needs_model = True
    needs_embeddings = False
    defaults: ClassVar[dict[str, Any]] = {"weight": 1.0}

    def rank(self, cand, budget, seed, params):
        weight = float(params.get("weight", self.defaults["weight"]))
        classes = sorted(
            {c for cnt in cand.counts.values() for c in cnt} | set(cand.labelled_counts)
        )
        total = sum(cand.labelled_counts.values())
        inv = {c: (total + len(classes)) / (cand.labelled_counts.get(c, 0) + 1) for c in classes}
        top = max(inv.values(), default=1.0)
        rarity = {c: v / top for c, v in inv.items()}

        def value(i: int) -> float:
            cnt = cand.counts.get(i, {})
            n = sum(cnt.values())
            bonus = sum(k * rarity.get(c, 0.0) for c, k in cnt.items()) / n if n else 0.0
            return cand.scores[i] * (1.0 + weight * bonus)

        scored = [i for i in cand.ids if i in cand.scores]
        return sorted(scored, key=lambda i: (-value(i), i))[:budget]
