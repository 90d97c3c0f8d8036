"""k-center greedy (the core-set selection of Sener & Savarese, 2018).

Each pick is the pool image farthest from everything already labelled or picked, so the
batch covers the pool's variety instead of piling into one dense region. Embeddings are
L2-normalised first: distances then compare directions of the features, not the
brightness of an image."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.clip(norms, 1e-12, None)


def kcenter_greedy(pool: np.ndarray, centres: np.ndarray, k: int, *, seed: int = 0) -> list[int]:
    """Indices of `k` rows of `pool` (N, D), in pick order. `centres` (M, D) are the
    already-labelled points; with none, the first pick is a seeded random one."""
    n = len(pool)
    k = min(k, n)
    if k <= 0:
        return []
    p = normalise(pool)
    if len(centres):
        c = normalise(centres)
        # Distances in chunks: (N, M) at once can be large for big labelled sets.
        min_d = np.full(n, np.inf)
        for start in range(0, len(c), 1024):
            d = sq_dist(p, c[start : start + 1024]).min(axis=1)
            min_d = np.minimum(min_d, d)
        picks: list[int] = []
    else:
        first = int(np.random.default_rng(seed).integers(n))
        picks = [first]
        min_d = sq_dist(p, p[first : first + 1])[:, 0]
    while len(picks) < k:
        min_d[picks] = -1.0  # never pick twice
        nxt = int(np.argmax(min_d))
        picks.append(nxt)
        min_d = np.minimum(min_d, sq_dist(p, p[nxt : nxt + 1])[:, 0])
    return picks


def sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0, None)
