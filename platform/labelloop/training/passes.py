"""Several looks at one image, for the multi-pass uncertainty methods.

- Test-time augmentation: the 8 symmetries of the square (flips and quarter turns), under
  which a cell image means the same thing. A view's output is mapped back to the
  original image's frame before it is compared.
- Monte-Carlo dropout: the network in training mode except its normalisation layers (which
  keep their running statistics), so every pass drops different units. Only a network
  with dropout (or stochastic depth) gives different passes; one without is refused,
  since its "disagreement" would be zero for every image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError

# (flip left-right first?, quarter turns counter-clockwise), identity first.
DIHEDRAL: tuple[tuple[bool, int], ...] = tuple((f, k) for f in (False, True) for k in range(4))
MC_SEED = 0  # fixed: scoring the same image twice gives the same number


def transform_image(img: np.ndarray, flip: bool, k: int) -> np.ndarray:
    out = img[:, ::-1] if flip else img
    return np.ascontiguousarray(np.rot90(out, k))


def unmap_boxes(boxes: np.ndarray, flip: bool, k: int, size: tuple[int, int]) -> np.ndarray:
    """Boxes (N, 4) x0, y0, x1, y1 found in `transform_image(img, flip, k)` back into the
    frame of `img` of `size` (H, W)."""
    h, w = size
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    corners = np.stack(
        [boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], axis=1
    ).astype(np.float64)  # (N, 4 corners, xy)
    x, y = corners[..., 0], corners[..., 1]
    for j in range(k, 0, -1):
        # Undo one counter-clockwise turn of an image whose width before it was w_prev:
        # forward (x, y) -> (y, w_prev - x), so back (x', y') -> (w_prev - y', x').
        w_prev = w if (j - 1) % 2 == 0 else h
        x, y = w_prev - y, x
    if flip:
        x = w - x
    out = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1)
    return out.astype(np.float32)


def unmap_probs(probs: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """(..., C, H', W') output of a transformed input back to the original frame."""
    out = probs.rot90(-k, dims=(-2, -1))
    return out.flip(-1) if flip else out


def _stochastic(model: nn.Module) -> bool:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if float(getattr(m, "drop_rate", 0.0) or 0.0) > 0:  # timm's functional dropout
            return True
        if float(getattr(m, "drop_prob", 0.0) or 0.0) > 0:  # timm DropPath
            return True
    return False


@contextmanager
def mc_dropout(model: nn.Module, hint: str) -> Iterator[None]:
    """Dropout on, batch statistics frozen, a fixed random seed; the model's modes are
    restored afterwards. `hint` says how to get a network with dropout."""
    if not _stochastic(model):
        raise ConfigError(f"Monte-Carlo dropout scoring needs dropout in the network: {hint}")
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            m.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MC_SEED)
            yield
    finally:
        for m, training in modes.items():
            m.training = training
