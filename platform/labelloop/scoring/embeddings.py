"""Image embeddings for diversity selection: stored per model version, or computed from
pixels when there is no model yet (cold start).

A model's embedding is its encoder's pooled deepest features (see each kind's `embed`).
Before any model exists, `pixel_embedding` describes an image by its colour statistics and
a tiny grey thumbnail: crude, but it spreads a first batch over stains, densities and
focus instead of picking five near-identical fields.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.db.models import Embedding

THUMB = 8
HIST_BINS = 8


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").reshape(-1).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def stored_ids(s: Session, model_version_id: int) -> set[int]:
    return set(
        s.scalars(
            select(Embedding.image_id).where(Embedding.model_version_id == model_version_id)
        ).all()
    )


def add_embeddings(
    s: Session, model_version_id: int, image_ids: Iterable[int], vectors: np.ndarray
) -> None:
    s.add_all(
        Embedding(
            model_version_id=model_version_id, image_id=i, dim=int(v.size), vector=to_bytes(v)
        )
        for i, v in zip(image_ids, vectors, strict=True)
    )


def load_embeddings(
    s: Session, model_version_id: int, image_ids: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    q = select(Embedding.image_id, Embedding.vector).where(
        Embedding.model_version_id == model_version_id
    )
    if image_ids is not None:
        q = q.where(Embedding.image_id.in_(list(image_ids)))
    return {i: from_bytes(v) for i, v in s.execute(q)}


def pixel_embedding(image: np.ndarray) -> np.ndarray:
    """(3 * 8 HSV histogram bins + 6 channel means/stds + 64 thumbnail pixels,) float32,
    each part scaled to comparable ranges."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hists = [
        np.histogram(hsv[..., c], bins=HIST_BINS, range=(0, 180 if c == 0 else 256))[0]
        for c in range(3)
    ]
    hist = np.concatenate(hists).astype(np.float64) / (image.shape[0] * image.shape[1])
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    stats = np.concatenate([rgb.mean(0), rgb.std(0)])
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float64)
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6) / THUMB
    return np.concatenate([hist, stats, thumb.reshape(-1)]).astype(np.float32)
