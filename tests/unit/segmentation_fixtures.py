"""Tiny synthetic segmentation data: coloured discs on a grey background, 64x64.

Class colours are far apart so a correct pipeline can be checked exactly (an oracle that
reads colours gets Dice 1) and a tiny network learns them in a few steps.
"""

from __future__ import annotations

import hashlib

import numpy as np

from labelloop.domain import Ellipse, shapes_to_json
from labelloop.geometry import rasterize_classes
from labelloop.imaging import encode_png

LABELS = ["Red", "Blue"]
BACKGROUND = (128, 128, 128)
COLOURS = {"Red": (220, 30, 30), "Blue": (30, 30, 220)}
SIZE = 64


def draw(discs: list[tuple[str, float, float, float]], size: int = SIZE) -> tuple[np.ndarray, list]:
    """Image and ellipse shapes for (label, cx, cy, r) discs; colours follow the rasterised
    label map so image and truth agree pixel for pixel."""
    shapes = [Ellipse(label=lab, x=cx, y=cy, rx=r, ry=r) for lab, cx, cy, r in discs]
    label_map = rasterize_classes(shapes, LABELS, size, size)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    for i, name in enumerate(LABELS, start=1):
        img[label_map == i] = COLOURS[name]
    return img, shapes


def random_discs(
    rng: np.random.Generator, size: int = SIZE
) -> list[tuple[str, float, float, float]]:
    """Two to four non-overlapping discs of random classes."""
    discs: list[tuple[str, float, float, float]] = []
    while len(discs) < rng.integers(2, 5):
        r = float(rng.uniform(5, 9))
        cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 2) ** 2 for _, x, y, q in discs):
            discs.append((str(rng.choice(LABELS)), cx, cy, r))
    return discs


def make_manifest(
    splits: dict[str, int] | None = None, seed: int = 0
) -> tuple[dict, dict[str, bytes]]:
    """A frozen manifest and its blob store as a dict (blob_key -> PNG bytes)."""
    splits = splits or {"train": 6, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    blobs: dict[str, bytes] = {}
    items = []
    for split, n in splits.items():
        for _ in range(n):
            img, shapes = draw(random_discs(rng))
            data = encode_png(img)
            sha = hashlib.sha256(data).hexdigest()
            key = f"images/{sha[:2]}/{sha}.png"
            blobs[key] = data
            items.append(
                {
                    "image_id": len(items) + 1,
                    "sha256": sha,
                    "blob_key": key,
                    "width": SIZE,
                    "height": SIZE,
                    "split": split,
                    "shapes": shapes_to_json(shapes),
                }
            )
    manifest = {
        "version": 1,
        "project": {"name": "discs", "task": "segmentation"},
        "labels": list(LABELS),
        "split_seed": seed,
        "items": items,
    }
    return manifest, blobs
