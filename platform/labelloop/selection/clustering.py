"""Clustering pieces the combined strategies share: D² (k-means++) seeding, Lloyd's
k-means and typicality. Plain numpy: pools are thousands of images, not millions."""

from __future__ import annotations

import numpy as np

from labelloop.selection.kcenter import sq_dist


def d2_seeding(
    points: np.ndarray, k: int, *, seed: int, initial: np.ndarray | None = None
) -> list[int]:
    """k-means++ seeding: each pick drawn with probability proportional to its squared
    distance to the nearest pick so far (or to `initial` centres). BADGE uses this on
    uncertainty-scaled embeddings: far (different) and long (uncertain) points win, and
    the randomness keeps a batch from being all outliers."""
    n = len(points)
    k = min(k, n)
    if k <= 0:
        return []
    rng = np.random.default_rng(seed)
    x = np.asarray(points, np.float64)
    if initial is not None and len(initial):
        min_d = sq_dist(x, np.asarray(initial, np.float64)).min(axis=1)
        picks: list[int] = []
    else:
        first = int(np.argmax((x * x).sum(1)))
        picks = [first]
        min_d = sq_dist(x, x[first : first + 1])[:, 0]
    while len(picks) < k:
        min_d[picks] = 0.0
        total = min_d.sum()
        if total <= 0:  # every remaining point coincides with a pick: take them in order
            rest = [i for i in range(n) if i not in set(picks)]
            picks.extend(rest[: k - len(picks)])
            break
        nxt = int(rng.choice(n, p=min_d / total))
        picks.append(nxt)
        min_d = np.minimum(min_d, sq_dist(x, x[nxt : nxt + 1])[:, 0])
    return picks


def kmeans(points: np.ndarray, k: int, *, seed: int, iters: int = 30) -> np.ndarray:
    """Cluster index per point: Lloyd's iterations from a k-means++ start."""
    x = np.asarray(points, np.float64)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    first = int(rng.integers(len(x)))
    centres = x[[first, *d2_seeding(x, k - 1, seed=seed, initial=x[first : first + 1])]]
    assign = np.full(len(x), -1, np.int64)
    for _ in range(iters):
        new = sq_dist(x, centres).argmin(axis=1)
        if (new == assign).all():
            break
        assign = new
        for c in range(len(centres)):
            members = x[assign == c]
            if len(members):
                centres[c] = members.mean(0)
    return assign


def typicality(points: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """1 / mean distance to each point's `neighbours` nearest others (TypiClust): high in
    the dense middle of a cluster, low for outliers."""
    x = np.asarray(points, np.float64)
    if len(x) < 2:
        return np.ones(len(x))
    d = np.sqrt(sq_dist(x, x))
    np.fill_diagonal(d, np.inf)
    k = min(neighbours, len(x) - 1)
    near = np.sort(d, axis=1)[:, :k]
    return 1.0 / (near.mean(axis=1) + 1e-12)
