"""Per-cell masks and confidences of one prediction: what scoring, `count` and
pre-annotation do for every pool image (`objects.label_map_to_shapes` with probabilities).

Two ways side by side in one run, on the same label maps: one full-image mask, RLE and
mean per cell (how it was done), and the library's (each cell read only within the
columns of its bounding box, one `ndimage.mean` per class). Both must give the same
masks and scores; CPU seconds of this process are reported (a shared machine inflates
wall time).

Usage: .venv/bin/python benchmarks/object_masks.py [--repeats 5]
Writes benchmarks/results/object_masks.json and object_masks.png."""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

import numpy as np
from scipy import ndimage

from labelloop.geometry import mask_shape
from labelloop.objects import label_map_to_shapes

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ["RBC", "WBC", "Platelets"]
CASES = ((256, 40), (512, 120), (1024, 400))  # (side in px, cells drawn)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_at_a_time(label_map: np.ndarray, probs: np.ndarray, min_area: int = 4) -> list:
    """The per-cell loop: a full-image boolean, RLE and mean for every cell."""
    shapes = []
    for i, name in enumerate(LABELS, start=1):
        comp, n = ndimage.label(label_map == i)
        areas = np.bincount(comp.ravel())
        for j in range(1, n + 1):
            if areas[j] < min_area:
                continue
            region = comp == j
            score = round(float(np.clip(probs[i - 1][region].mean(), 0.0, 1.0)), 4)
            shape = mask_shape(region, name)
            shapes.append(shape.model_copy(update={"attributes": {"score": score}}))
    return shapes


def _case(side: int, cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label_map = np.zeros((side, side), np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for k in range(cells):
        cy, cx = rng.integers(10, side - 10, 2)
        r = rng.integers(5, 12)
        label_map[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1 + k % 3
    return label_map, rng.random((3, side, side)).astype(np.float32)


def _time(fn, *args, repeats: int) -> float:
    t0 = _cpu()
    for _ in range(repeats):
        fn(*args)
    return (_cpu() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for side, cells in CASES:
        label_map, probs = _case(side, cells)
        old = one_at_a_time(label_map, probs)
        new = label_map_to_shapes(label_map, LABELS, label_probs=probs)
        assert [s.model_dump() for s in old] == [s.model_dump() for s in new], "masks differ"
        loop = _time(one_at_a_time, label_map, probs, repeats=args.repeats)
        library = _time(
            lambda m, p: label_map_to_shapes(m, LABELS, label_probs=p),
            label_map,
            probs,
            repeats=args.repeats,
        )
        row = {
            "side_px": side,
            "objects": len(new),
            "one_at_a_time_ms": round(loop * 1000, 2),
            "library_ms": round(library * 1000, 2),
            "speedup": round(loop / library, 2),
        }
        rows.append(row)
        print(row, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "object_masks.json").write_text(json.dumps(rows, indent=2))
    _plot(rows)


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["one_at_a_time_ms"] for r in rows], 0.4, label="one cell at a time")
    ax.bar(x + 0.2, [r["library_ms"] for r in rows], 0.4, label="within each cell's columns")
    ax.set_xticks(x, [f"{r['side_px']} px, {r['objects']} cells" for r in rows])
    ax.set_ylabel("CPU ms per image")
    ax.set_yscale("log")
    ax.set_title("Per-cell masks + confidences of one prediction")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "object_masks.png", dpi=120)


if __name__ == "__main__":
    main()
