"""Confusion-matrix figure for a classifier evaluation (PNG, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_confusion(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Write a confusion matrix (rows = truth, columns = prediction) as a PNG.

    Colour is the row-normalised rate (recall per true class), so a rare class is as
    readable as a common one; each cell also prints its raw count and that rate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    if cm.shape != (n, n):
        raise ValueError(f"matrix of shape {cm.shape} does not fit {n} labels")
    rows = cm.sum(1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    side = 1.6 + 0.9 * n
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
        ax.set_xticks(range(n), labels=list(labels), rotation=30, ha="right")
        ax.set_yticks(range(n), labels=list(labels))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        for i in range(n):
            for j in range(n):
                colour = "white" if rate[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{rate[i, j]:.0%}",
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=9,
                )
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
