"""Mixup and CutMix for classifier batches: each image blended with (or patched from)
another of the same batch, and the loss shared between the two labels in the same
proportion.

Why: a few thousand crops trained from scratch, some of them mislabelled, let a network
memorise single crops; training on mixtures asks for predictions that change linearly
between examples, which is known to soften the pull of wrong labels (Zhang et al. 2018,
mixup; Yun et al. 2019, CutMix). Off unless a recipe sets an alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixedBatch:
    """Mixed images, the two label sets, and the weight `lam` of the first."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def _cut_box(h: int, w: int, lam: float) -> tuple[int, int, int, int]:
    """A box covering about (1 - lam) of an h x w image at a random centre, clipped."""
    ratio = (1.0 - lam) ** 0.5
    ch, cw = round(h * ratio), round(w * ratio)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    return y0, y1, x0, x1


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    mixup_alpha: float | None,
    cutmix_alpha: float | None,
) -> MixedBatch:
    """Mix a batch (N, C, H, W) with a shuffled copy of itself.

    With one alpha set, that method is used; with both, each batch picks one of them at
    even odds (as timm does). With neither, the batch comes back unchanged (lam 1). For
    CutMix, lam is the share of pixels that stay the first image's after clipping.
    """
    methods = [(m, a) for m, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a]
    if not methods or len(x) < 2:
        return MixedBatch(x, y, y, 1.0)
    method, alpha = methods[int(torch.randint(len(methods), ()))]
    perm = torch.randperm(len(x), device=x.device)
    if method == "mixup":
        lam = _beta(alpha)
        return MixedBatch(lam * x + (1.0 - lam) * x[perm], y, y[perm], lam)
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = _cut_box(h, w, _beta(alpha))
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return MixedBatch(mixed, y, y[perm], lam)
