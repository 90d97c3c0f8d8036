"""The detector as plain nn.Modules: timm backbone -> PAN neck -> decoupled head.

Backbone choice: the whole detector (neck 64, head 64), forward + backward of a batch of
16 at 416 px on one thread, in CPU seconds (wall time on a shared machine is too noisy to
rank by), and test mAP@0.5 on BCCD after 8 epochs from scratch:

    regnetx_002              3.0 M params   1.94 s   0.732
    lcnet_075                1.3 M          1.83 s   (0.46 after 11 epochs, older recipe)
    lcnet_100                1.7 M          2.13 s
    cs3darknet_focus_s       3.5 M          2.64 s
    hgnetv2_b0               2.6 M          3.01 s   0.595
    mobilenetv3_large_075    2.5 M          3.16 s
    (ultralytics YOLOv8n     3.0 M          2.2 s, for scale)

`regnetx_002` is the default: its grouped 3x3 convolutions run well on one CPU thread,
it learned faster per epoch than hgnetv2_b0 and lcnet_075, and its stride-8/16/32
features are narrow (56/152/368 channels), so the neck's 1x1 lateral convolutions are
cheap. hgnetv2_b0 spends much of its time on
elementwise passes (learnable affine after every activation) over large early maps.
In 30 CPU-minutes on BCCD (one seed, one machine; BENCHMARKS.md) regnety_002 (the same
with squeeze-and-excitation, 1.03x the step) and regnetx_004 (1.16x) both scored test
mAP@0.5 0.909, as regnetx_002 did beside them.

The head is YOLOv8-like: per level a class branch and a box branch; a box is four
distances (left, top, right, bottom) from the grid point, predicted as a distribution over
`reg_max` bins (DFL) or, with reg_max=0, directly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from labelloop.errors import ConfigError
from labelloop.training.detection.recipe import DetectionRecipe

STRIDES = (8, 16, 32)


class DetOutput(NamedTuple):
    """Raw network output over all grid points A of all levels."""

    cls_logits: torch.Tensor  # (B, A, C)
    box_raw: torch.Tensor  # (B, A, 4 * reg_max) or (B, A, 4)
    points: torch.Tensor  # (A, 2) grid-cell centres in input pixels (x, y)
    strides: torch.Tensor  # (A, 1)


class ConvBnAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),
        )


class CspBlock(nn.Module):
    """C2f-style block: split, a chain of residual 3x3 pairs on one half, concatenate every
    intermediate output, fuse with 1x1. Cheap, and gradients reach the input directly."""

    def __init__(self, c_in: int, c_out: int, n: int = 1):
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = ConvBnAct(c_in, 2 * self.hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(ConvBnAct(self.hidden, self.hidden), ConvBnAct(self.hidden, self.hidden))
            for _ in range(n)
        )
        self.cv2 = ConvBnAct((2 + n) * self.hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))
        for block in self.blocks:
            parts.append(parts[-1] + block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class Pan(nn.Module):
    """FPN top-down then PAN bottom-up path over three levels, `widths` channels at strides
    8, 16 and 32 (one width for all, or wider at the coarser, cheaper levels)."""

    def __init__(self, in_channels: list[int], widths: list[int], depth: int = 1):
        super().__init__()
        w3, w4, w5 = widths
        self.lateral = nn.ModuleList(
            ConvBnAct(c, w, 1) for c, w in zip(in_channels, widths, strict=True)
        )
        self.top_down = nn.ModuleList([CspBlock(w5 + w4, w4, depth), CspBlock(w4 + w3, w3, depth)])
        self.down = nn.ModuleList([ConvBnAct(w3, w3, 3, 2), ConvBnAct(w4, w4, 3, 2)])
        self.bottom_up = nn.ModuleList([CspBlock(w3 + w4, w4, depth), CspBlock(w4 + w5, w5, depth)])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = (lat(f) for lat, f in zip(self.lateral, feats, strict=True))
        p4 = self.top_down[0](torch.cat([F.interpolate(c5, size=c4.shape[-2:]), c4], 1))
        p3 = self.top_down[1](torch.cat([F.interpolate(p4, size=c3.shape[-2:]), c3], 1))
        n4 = self.bottom_up[0](torch.cat([self.down[0](p3), p4], 1))
        n5 = self.bottom_up[1](torch.cat([self.down[1](n4), c5], 1))
        return [p3, n4, n5]


def level_widths(width: int, growth: float) -> list[int]:
    """Neck widths at strides 8, 16 and 32: `width` times growth per level, in multiples
    of 8 (growth 2 from 64 is YOLOv8n's 64 / 128 / 256)."""
    return [max(8, round(width * growth**i / 8) * 8) for i in range(len(STRIDES))]


class DecoupledHead(nn.Module):
    """Per level: a class branch and a box branch, each two 3x3 convs and a 1x1 output."""

    def __init__(self, widths: list[int], channels: int, num_classes: int, box_out: int):
        super().__init__()
        self.num_classes = num_classes

        def branch(width: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                ConvBnAct(width, channels),
                ConvBnAct(channels, channels),
                nn.Conv2d(channels, c_out, 1),
            )

        self.cls = nn.ModuleList(branch(w, num_classes) for w in widths)
        self.box = nn.ModuleList(branch(w, box_out) for w in widths)

    def init_bias(self, image_size: int) -> None:
        """Start with few confident points (about 5 objects per image per class) and boxes
        about four grid cells wide (two from the point to each side).

        Small start boxes matter for small objects: task-aligned targets are the IoU of a
        point's predicted box with its object, and they also weight the box losses, so a
        25 px platelet under the 120 px boxes of uniform DFL bins (7.5 bins a side) gets
        targets near 0.04 and learns very slowly. Boxes of ~4 cells per level fit what
        each level ends up holding (platelets at stride 8, RBCs at 16, WBCs at 32)."""
        for cls_branch, box_branch, s in zip(self.cls, self.box, STRIDES, strict=True):
            prior = 5 / self.num_classes / (image_size / s) ** 2
            nn.init.constant_(cls_branch[-1].bias, math.log(prior / (1 - prior)))
            out = box_branch[-1].bias
            reg_max = out.numel() // 4 if out.numel() > 4 else 0
            with torch.no_grad():
                out.copy_(init_box_bias(reg_max).repeat(4))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls, box = [], []
        for f, cb, bb in zip(feats, self.cls, self.box, strict=True):
            cls.append(cb(f).flatten(2))
            box.append(bb(f).flatten(2))
        return torch.cat(cls, 2).transpose(1, 2), torch.cat(box, 2).transpose(1, 2)


def init_box_bias(reg_max: int, distance: float = 2.0) -> torch.Tensor:
    """Per-side output biases whose decoded distance is about `distance` cells: geometric
    bin logits for DFL (mean r / (1 - r) = distance), inverse softplus without DFL."""
    if not reg_max:
        return torch.tensor([math.log(math.expm1(distance))])
    bins = torch.arange(reg_max, dtype=torch.float64)
    lo, hi = -20.0, 0.0  # log r; the mean grows with it, up to the uniform (reg_max - 1) / 2
    for _ in range(60):
        mid = (lo + hi) / 2
        mean = float((torch.softmax(bins * mid, 0) * bins).sum())
        lo, hi = (mid, hi) if mean < distance else (lo, mid)
    return (bins * (lo + hi) / 2).float()


def grid_points(
    shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (A, 2) of every cell of every level, in input pixels, and their strides (A, 1)."""
    points, strides = [], []
    for (h, w), s in zip(shapes, STRIDES, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([gx, gy], -1).reshape(-1, 2))
        strides.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(strides)


class Detector(nn.Module):
    """Backbone + neck + head; `forward` returns `DetOutput` (decode with `decode_boxes`)."""

    def __init__(
        self,
        encoder: str,
        num_classes: int,
        *,
        width: int = 64,
        growth: float = 1.0,
        depth: int = 1,
        head_channels: int = 64,
        reg_max: int = 16,
        pretrained: str | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        probe = timm.create_model(encoder, pretrained=False, features_only=True)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ConfigError(
                f"encoder {encoder!r} has no feature maps at strides {missing} "
                f"(it has {reductions}); choose a CNN backbone with strides 8, 16 and 32"
            )
        # The last feature map at each stride: the deepest features of that resolution.
        indices = [len(reductions) - 1 - reductions[::-1].index(s) for s in STRIDES]
        name, overlay = encoder, {}
        if pretrained and Path(pretrained).is_file():
            overlay = {"pretrained_cfg_overlay": {"file": pretrained}}
        elif pretrained and pretrained not in ("imagenet", "default"):
            name = f"{encoder.split('.')[0]}.{pretrained}"  # a timm weights tag, e.g. in1k
        self.backbone = timm.create_model(
            name,
            pretrained=pretrained is not None,
            features_only=True,
            out_indices=indices,
            **overlay,
        )
        widths = level_widths(width, growth)
        self.neck = Pan(list(self.backbone.feature_info.channels()), widths, depth)
        self.head = DecoupledHead(widths, head_channels, num_classes, 4 * reg_max if reg_max else 4)
        self._grid: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> DetOutput:
        if x.shape[-1] % STRIDES[-1] or x.shape[-2] % STRIDES[-1]:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of 32")
        feats = self.neck(self.backbone(x.contiguous(memory_format=torch.channels_last)))
        cls, box = self.head(feats)
        key = (tuple(f.shape[-2:] for f in feats), x.device, x.dtype)
        if key not in self._grid:
            self._grid = {key: grid_points([tuple(f.shape[-2:]) for f in feats], x.device, x.dtype)}
        points, strides = self._grid[key]
        return DetOutput(cls, box, points, strides)


def box_distances(box_raw: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(..., 4) left/top/right/bottom distances in stride units: the expectation over the
    DFL bins, or a softplus of direct outputs (reg_max=0), which keeps them positive."""
    if reg_max:
        probs = box_raw.unflatten(-1, (4, reg_max)).softmax(-1)
        bins = torch.arange(reg_max, device=box_raw.device, dtype=probs.dtype)
        return probs @ bins
    return F.softplus(box_raw)


def decode_boxes(out: DetOutput, reg_max: int) -> torch.Tensor:
    """Boxes (B, A, 4) as x0, y0, x1, y1 in input pixels."""
    return decode_at(out.box_raw, out.points, out.strides, reg_max)


def decode_at(
    box_raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, reg_max: int
) -> torch.Tensor:
    """Boxes (..., 4) xyxy from raw box outputs (..., 4 * reg_max or 4) at the given points
    (..., 2) and strides (..., 1): the loss decodes only its foreground points this way."""
    d = box_distances(box_raw, reg_max) * strides
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)


def build_detector(
    recipe: DetectionRecipe, num_classes: int, *, pretrained: bool | None = None
) -> Detector:
    """The recipe's detector; pretrained backbone weights only when the recipe names them
    (and `pretrained` is not False: loading saved weights needs no download)."""
    weights = recipe.encoder_weights if pretrained is not False else None
    try:
        net = Detector(
            recipe.encoder,
            num_classes,
            width=recipe.neck_channels,
            growth=recipe.growth,
            depth=recipe.neck_depth,
            head_channels=recipe.head_channels,
            reg_max=recipe.reg_max,
            pretrained=None if weights in (None, "", "none") else weights,
        )
    except RuntimeError as exc:  # timm: unknown weights tag, unreachable hub
        raise ConfigError(f"cannot build detector backbone {recipe.encoder!r}: {exc}") from exc
    net.head.init_bias(recipe.image_size)
    # oneDNN runs these convolutions about twice as fast on CPU in NHWC layout.
    return net.to(memory_format=torch.channels_last)
