"""Strategies that combine signals: uncertainty with diversity, class balance and
difficulty, typicality for a cold start, and count uncertainty for counting projects.

Random with good training is hard to beat (Mittal 2019, Munjal 2022); what beats it in
published work combines uncertainty with diversity (BADGE, Cluster-Margin), adds class
balance and difficulty for detection (PPAL), and at tiny budgets prefers typical images
over uncertain ones (TypiClust). Each class here is one of those ideas over what the score
stage stores: per-image uncertainty, per-class box statistics (`Candidates.details`, from
calibrated probabilities), per-class validation difficulty and image embeddings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from labelloop.selection.clustering import d2_seeding, kmeans, typicality
from labelloop.selection.kcenter import kcenter_greedy, normalise
from labelloop.selection.strategies import (
    Candidates,
    by_uncertainty,
    embeddings_of,
    shortlist_size,
)


def _rarity(cand: Candidates) -> dict[str, float]:
    """1 / (labelled share of a class), the rarest class scaled to 1 (as class_balance)."""
    classes = sorted(
        {c for cnt in cand.counts.values() for c in cnt}
        | set(cand.labelled_counts)
        | {c for d in cand.details.values() for c in d.get("box_uncertainty", {})}
    )
    total = sum(cand.labelled_counts.values())
    inv = {c: (total + len(classes)) / (cand.labelled_counts.get(c, 0) + 1) for c in classes}
    top = max(inv.values(), default=1.0)
    return {c: v / top for c, v in inv.items()}


def _rows(cand: Candidates, ids: list[int]) -> list[int]:
    row = {i: r for r, i in enumerate(cand.ids)}
    return [row[i] for i in ids]


class BadgeStrategy:
    """BADGE-style uncertainty + diversity: k-means++ seeding over embeddings scaled by
    uncertainty. BADGE's gradient embedding has a length that grows with the model's
    doubt and a direction given by the features; here each L2-normalised embedding is
    scaled by the stored (calibrated) uncertainty, and the labelled set sits at the
    origin (confident images have near-zero gradients). A batch is then both uncertain
    and spread, without a prefilter size to tune."""

    name = "badge"
    needs_scores = True
    needs_model = True
    needs_embeddings = True
    defaults: ClassVar[dict[str, Any]] = {}

    def rank(self, cand, budget, seed, params):
        ids = by_uncertainty(cand)
        if not ids:
            return []
        pool, _ = embeddings_of(cand, self.name)
        x = normalise(pool[_rows(cand, ids)])
        u = np.array([cand.scores[i] for i in ids])
        g = x * u[:, None]
        origin = np.zeros((1, g.shape[1]))
        picks = d2_seeding(g, budget, seed=seed, initial=origin)
        return [ids[p] for p in picks]


class ClusterMarginStrategy:
    """Cluster-Margin-style: of the `prefilter` x budget most uncertain images, cluster the
    embeddings into `budget` groups and deal round-robin from the smallest group up (most
    uncertain first within each), so no single look-alike group fills the round."""

    name = "cluster_margin"
    needs_scores = True
    needs_model = True
    needs_embeddings = True
    defaults: ClassVar[dict[str, Any]] = {"prefilter": 5.0}

    def rank(self, cand, budget, seed, params):
        short = by_uncertainty(cand)[: shortlist_size(self, params, budget)]
        if not short:
            return []
        pool, _ = embeddings_of(cand, self.name)
        assign = kmeans(normalise(pool[_rows(cand, short)]), budget, seed=seed)
        groups: dict[int, list[int]] = {}
        for i, a in zip(short, assign, strict=True):  # `short` is most uncertain first
            groups.setdefault(int(a), []).append(i)
        order = sorted(groups.values(), key=lambda g: (len(g), g[0]))
        out: list[int] = []
        while len(out) < min(budget, len(short)):
            for g in order:
                if g:
                    out.append(g.pop(0))
        return out[:budget]


class DetectionAwareStrategy:
    """Detection-aware (after PPAL): per class, the mean calibrated uncertainty of an
    image's boxes of that class, weighted by how hard the class is (1 - its validation
    AP50) and how rare it is among the labels, summed over classes: a clump of doubtful
    RBCs counts once, as RBC doubt, and does not outweigh one doubtful platelet. Then, of
    the `prefilter` x budget best, a category-conditioned diverse batch: k-center over the
    image embedding joined with the image's predicted class composition (`composition`).

    Reads `box_uncertainty` and `counts` from the stored score details (detection scoring
    stores them); an image without them (no boxes) keeps its plain uncertainty score.
    Diversity is over image-level embeddings: box-level features are not stored."""

    name = "detection_aware"
    needs_scores = True
    needs_model = True
    needs_embeddings = True
    defaults: ClassVar[dict[str, Any]] = {"prefilter": 3.0, "rarity": 1.0, "composition": 1.0}

    def values(self, cand: Candidates, params: dict[str, Any]) -> dict[int, float]:
        rarity = _rarity(cand)
        w_rare = float(params.get("rarity", self.defaults["rarity"]))

        def weight(c: str) -> float:
            hard = cand.class_difficulty.get(c, 0.5)
            return (0.5 + hard) * (1.0 + w_rare * rarity.get(c, 0.0))

        out = {}
        for i in cand.ids:
            d = cand.details.get(i, {})
            per_class, n = d.get("box_uncertainty"), d.get("counts") or {}
            if per_class and any(n.get(c) for c in per_class):
                out[i] = sum(weight(c) * u / n[c] for c, u in per_class.items() if n.get(c))
            elif i in cand.scores:
                out[i] = cand.scores[i] * max((weight(c) for c in rarity), default=1.0)
        return out

    def rank(self, cand, budget, seed, params):
        size = shortlist_size(self, params, budget)
        value = self.values(cand, params)
        ordered = sorted(value, key=lambda i: (-value[i], i))
        short = ordered[:size]
        if not short:
            return []
        pool, labelled = embeddings_of(cand, self.name)
        classes = sorted({c for i in cand.ids for c in cand.counts.get(i, {})})
        lam = float(params.get("composition", self.defaults["composition"]))

        def composition(ids: list[int]) -> np.ndarray:
            m = np.array(
                [[cand.counts.get(i, {}).get(c, 0) for c in classes] for i in ids], np.float64
            ).reshape(len(ids), len(classes))
            return lam * m / np.clip(m.sum(1, keepdims=True), 1, None)

        x = np.hstack([normalise(pool[_rows(cand, short)]), composition(short)])
        # The labelled images' composition is not among the candidates: features only.
        lab = np.zeros((len(labelled), x.shape[1]))
        if len(labelled):
            lab[:, : pool.shape[1]] = normalise(labelled)
        picks = kcenter_greedy(x, lab, budget, seed=seed)
        return [short[p] for p in picks]


class TypicalityStrategy:
    """TypiClust cold start: cluster labelled + pool embeddings into (labelled + budget)
    groups, and from each group that holds no labelled image, largest first, take its most
    typical image (densest neighbourhood). At a budget of a few images, typical examples
    of each kind of field teach more than uncertain or outlying ones. Needs no model: with
    none, images are described by their pixels."""

    name = "typiclust"
    needs_scores = False
    needs_model = False
    needs_embeddings = True
    defaults: ClassVar[dict[str, Any]] = {"neighbours": 20}

    def rank(self, cand, budget, seed, params):
        pool, labelled = embeddings_of(cand, self.name)
        if not len(pool):
            return []
        k_nn = int(params.get("neighbours", self.defaults["neighbours"]))
        x = normalise(np.vstack([pool, labelled]) if len(labelled) else pool)
        n_pool = len(pool)
        assign = kmeans(x, len(labelled) + budget, seed=seed)
        covered = set(assign[n_pool:].tolist())
        groups: dict[int, list[int]] = {}
        for r in range(n_pool):
            groups.setdefault(int(assign[r]), []).append(r)
        sizes = {g: int((assign == g).sum()) for g in groups}
        order = sorted(groups, key=lambda g: (g in covered, -sizes[g], g))
        ranked_groups = []
        for g in order:
            rows = groups[g]
            typ = typicality(x[rows], k_nn)
            ranked_groups.append([rows[j] for j in np.argsort(-typ, kind="stable")])
        out: list[int] = []
        while len(out) < min(budget, n_pool):  # one per group, then round-robin
            for g in ranked_groups:
                if g and len(out) < budget:
                    out.append(g.pop(0))
        return [cand.ids[r] for r in out]


class CountUncertaintyStrategy:
    """For counting projects: the images whose reported counts are least certain. With
    calibrated box probabilities s, a kept box is a real cell with probability s, so the
    count's variance is the sum of s(1 - s) (a Poisson-binomial); per class its standard
    deviation (`count_sd` in the stored details) is weighted by the class's rarity (a
    wrong platelet count matters more than one RBC in 200). Images without that detail
    fall back to the stored uncertainty score (e.g. `count_variance` over TTA views)."""

    name = "count_uncertainty"
    needs_scores = True
    needs_model = True
    needs_embeddings = False
    defaults: ClassVar[dict[str, Any]] = {"rarity": 1.0}

    def rank(self, cand, budget, seed, params):
        rarity = _rarity(cand)
        w = float(params.get("rarity", self.defaults["rarity"]))
        value: dict[int, float] = {}
        for i in cand.ids:
            sd = cand.details.get(i, {}).get("count_sd") or _interval_spread(
                cand.count_intervals.get(i)
            )
            if sd:
                value[i] = sum(v * (1.0 + w * rarity.get(c, 0.0)) for c, v in sd.items())
            elif i in cand.scores:
                value[i] = cand.scores[i]
        return sorted(value, key=lambda i: (-value[i], -cand.scores.get(i, 0.0), i))[:budget]


def _interval_spread(intervals: dict[str, dict[str, float]] | None) -> dict[str, float]:
    """Per class, half the width of a stored count interval (`objects.count_intervals`):
    the spread where no box statistics exist (segmentation instances)."""
    return {c: (float(v["high"]) - float(v["low"])) / 2 for c, v in (intervals or {}).items()}
