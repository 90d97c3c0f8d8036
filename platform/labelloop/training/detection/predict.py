"""Loading a saved detector and turning its output into boxes in original image pixels.

letterbox -> network -> decode -> class-aware NMS -> boxes mapped back through the exact
inverse of the letterbox affine (so a box drawn on the original image lands where the
network saw it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from labelloop.domain import Box
from labelloop.errors import ConfigError
from labelloop.training.common import check_images, inference, inputs_to_tensor, load_state_dict
from labelloop.training.detection.data import letterbox_matrix, unmap_boxes, warp
from labelloop.training.detection.network import Detector, DetOutput, build_detector, decode_boxes
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.kind import Prediction
from labelloop.training.passes import DIHEDRAL
from labelloop.training.passes import unmap_boxes as unturn_boxes

# Boxes passed to NMS per image at most, best scores first: bounds NMS time early in
# training, when thousands of points clear a low score threshold.
PRE_NMS_TOPK = 3000


@dataclass
class Detections:
    """Kept boxes of one image (after NMS), best first."""

    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64 class index
    class_probs: np.ndarray  # (N, C) float32 per-class sigmoid scores of each box

    def subset(self, keep: np.ndarray) -> Detections:
        """The boxes that `keep` (a mask or indices) selects, in the same order."""
        return Detections(
            self.boxes[keep], self.scores[keep], self.labels[keep], self.class_probs[keep]
        )


def postprocess(
    out: DetOutput,
    recipe: DetectionRecipe,
    score_threshold: float,
    *,
    multi_label: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Per image: boxes (input pixels), scores, labels, class_probs after class-aware NMS.

    A grid point yields its best class, or with `multi_label` one box per class scoring
    above the threshold: what mAP is scored on (as COCO-style evaluations of YOLO
    detectors do), since a doubtful cell then still ranks under its second class.
    Counts and pre-annotations keep one box per point."""
    probs = out.cls_logits.float().sigmoid()
    boxes = decode_boxes(out, recipe.reg_max).float()
    return select(probs, boxes, recipe, score_threshold, multi_label=multi_label)


def select(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    recipe: DetectionRecipe,
    score_threshold: float,
    *,
    multi_label: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """`postprocess` from per-point class probabilities (B, A, C) and boxes (B, A, 4)."""
    results = []
    for p, b in zip(probs, boxes, strict=True):
        if multi_label:
            point, labels = (p > score_threshold).nonzero(as_tuple=True)
            p, b, scores = p[point], b[point], p[point, labels]
        else:
            scores, labels = p.max(-1)
            keep = scores > score_threshold
            p, b, scores, labels = p[keep], b[keep], scores[keep], labels[keep]
        if len(scores) > PRE_NMS_TOPK:
            top = scores.topk(PRE_NMS_TOPK).indices
            p, b, scores, labels = p[top], b[top], scores[top], labels[top]
        kept = batched_nms(b, scores, labels, recipe.nms_iou)[: recipe.max_detections]
        results.append(
            {
                "boxes": b[kept],
                "scores": scores[kept],
                "labels": labels[kept],
                "class_probs": p[kept],
            }
        )
    return results


def load_detector(
    weights: bytes | Path, recipe: DetectionRecipe, labels: Sequence[str]
) -> Detector:
    """The recipe's detector with saved weights (read weights-only), in eval mode on CPU."""
    state = load_state_dict(weights)
    model = build_detector(recipe, len(labels), pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"weights do not fit detector {recipe.encoder} (neck {recipe.neck_channels} growing "
            f"{recipe.growth}x a level, "
            f"reg_max {recipe.reg_max}) with {len(labels)} classes: {exc}"
        ) from exc
    return model.eval()


def detect(
    model: nn.Module,
    images: Sequence[np.ndarray],
    recipe: DetectionRecipe,
    *,
    score_threshold: float | None = None,
    batch_size: int | None = None,
    multi_label: bool = False,
    labels: Sequence[str] | None = None,
) -> list[Detections]:
    """Detections for each RGB uint8 image, in that image's pixels (see `postprocess`).

    Without `score_threshold`, the kept boxes: each class above its count threshold
    (`recipe.count_thresholds`, named by `labels`; else `recipe.score_threshold`)."""
    if score_threshold is not None:
        return detect_passes(model, images, recipe, [(score_threshold, multi_label)], batch_size)[0]
    floor = count_floor(recipe)
    dets = detect_passes(model, images, recipe, [(floor, multi_label)], batch_size)[0]
    return [keep_counted(d, recipe, labels) for d in dets]


def count_floor(recipe: DetectionRecipe) -> float:
    """The lowest score any class keeps a box at."""
    return min([recipe.score_threshold, *recipe.count_thresholds.values()])


def keep_counted(
    det: Detections, recipe: DetectionRecipe, labels: Sequence[str] | None
) -> Detections:
    """The boxes of `det` at or above their class's count threshold."""
    if not recipe.count_thresholds or labels is None:
        keep = det.scores >= recipe.score_threshold
    else:
        per = [recipe.count_thresholds.get(lb, recipe.score_threshold) for lb in labels]
        keep = det.scores >= np.asarray(per, np.float32)[det.labels]
    return det.subset(keep)


def detect_passes(
    model: nn.Module,
    images: Sequence[np.ndarray],
    recipe: DetectionRecipe,
    passes: Sequence[tuple[float, bool]],
    batch_size: int | None = None,
) -> list[list[Detections]]:
    """One forward pass per image, post-processed once per (score threshold, multi_label)
    in `passes`: evaluation needs both the ranked tail for mAP and the kept boxes for counts."""
    bs = batch_size or recipe.batch_size
    size = recipe.image_size
    check_images(images)
    device = next(model.parameters()).device
    out: list[list[Detections]] = [[] for _ in passes]
    with inference(model):
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            mats = [letterbox_matrix(img.shape[:2], size) for img in chunk]
            x = inputs_to_tensor([warp(img, m, size) for img, m in zip(chunk, mats, strict=True)])
            probs, boxes = point_predictions(model, x.to(device), recipe)
            for results, (threshold, multi) in zip(out, passes, strict=True):
                dets = select(probs, boxes, recipe, threshold, multi_label=multi)
                for img, m, det in zip(chunk, mats, dets, strict=True):
                    results.append(_in_image(det, m, img.shape[:2]))
    return out


def point_predictions(
    model: nn.Module, x: torch.Tensor, recipe: DetectionRecipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (B, A, C) and boxes (B, A, 4, input pixels) at every grid point,
    averaged over the recipe's `tta_views` flipped / turned views of the letterboxed square.

    A turned square's grid points are the same points in another order, so each point's
    probabilities and box from every view are put back at that point and averaged before
    NMS: a cell seen in most views keeps a high score, one seen in a single view sinks."""
    probs_sum: torch.Tensor | None = None
    boxes_sum: torch.Tensor | None = None
    views = DIHEDRAL[: recipe.views]
    for flip, k in views:
        turned = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
        out = model(turned.contiguous(memory_format=torch.channels_last))
        probs = out.cls_logits.float().sigmoid()
        boxes = decode_boxes(out, recipe.reg_max).float()
        if flip or k:
            size = x.shape[-1]
            order = _unturned_order(out.points, out.strides, flip, k, size)
            back = [unturn_boxes(b.cpu().numpy(), flip, k, (size, size)) for b in boxes]
            boxes = torch.from_numpy(np.stack(back)).to(probs.device)
            probs = torch.empty_like(probs).index_copy_(1, order, probs)
            boxes = torch.empty_like(boxes).index_copy_(1, order, boxes)
        probs_sum = probs if probs_sum is None else probs_sum + probs
        boxes_sum = boxes if boxes_sum is None else boxes_sum + boxes
    assert probs_sum is not None and boxes_sum is not None
    return probs_sum / len(views), boxes_sum / len(views)


_ORDERS: dict[tuple[bool, int, int, int], torch.Tensor] = {}


def _unturned_order(
    points: torch.Tensor, strides: torch.Tensor, flip: bool, k: int, size: int
) -> torch.Tensor:
    """For each grid point of a turned view, the index of the same point unturned."""
    key = (flip, k, size, len(points))
    if key not in _ORDERS:
        pts = points.detach().cpu().double().numpy()
        level = strides.detach().cpu().reshape(-1).round().long().tolist()
        # Grid-cell centres sit at half-pixel multiples, so doubled they are exact integers.
        index = {
            (round(2 * px), round(2 * py), s): i
            for i, ((px, py), s) in enumerate(zip(pts, level, strict=True))
        }
        back = unturn_boxes(np.concatenate([pts, pts], 1), flip, k, (size, size))
        _ORDERS[key] = torch.tensor(
            [
                index[(round(2 * float(bx)), round(2 * float(by)), s)]
                for (bx, by), s in zip(back[:, :2], level, strict=True)
            ],
            dtype=torch.long,
        )
    return _ORDERS[key].to(points.device)


def _in_image(det: dict[str, torch.Tensor], m: np.ndarray, hw: tuple[int, int]) -> Detections:
    return Detections(
        boxes=unmap_boxes(det["boxes"].cpu().numpy(), m, hw),
        scores=det["scores"].cpu().numpy().astype(np.float32),
        labels=det["labels"].cpu().numpy().astype(np.int64),
        class_probs=det["class_probs"].cpu().numpy().astype(np.float32),
    )


def to_prediction(det: Detections, labels: Sequence[str]) -> Prediction:
    """Box shapes (score in attributes, as Label Studio pre-annotations carry it), counts per
    label (zeros included), confidence = mean box score (0 with no boxes: an empty smear
    field means the model is lost, not sure)."""
    shapes = [
        Box(
            label=labels[int(c)],
            x=float(b[0]),
            y=float(b[1]),
            w=float(b[2] - b[0]),
            h=float(b[3] - b[1]),
            attributes={"score": round(float(s), 4)},
        )
        for b, s, c in zip(det.boxes, det.scores, det.labels, strict=True)
    ]
    counts = {name: int((det.labels == i).sum()) for i, name in enumerate(labels)}
    return Prediction(
        shapes=list(shapes),
        counts=counts,
        confidence=float(det.scores.mean()) if len(det.scores) else 0.0,
        arrays={
            "boxes": det.boxes,
            "scores": det.scores,
            "labels": det.labels,
            "class_probs": det.class_probs,
        },
    )


def predict_detection(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: DetectionRecipe,
    labels: Sequence[str],
) -> list[Prediction]:
    """`ModelKind.predict`: boxes above their class's count threshold, per image."""
    return [to_prediction(d, labels) for d in detect(model, images, recipe, labels=labels)]
