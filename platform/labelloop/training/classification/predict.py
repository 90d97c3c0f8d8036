"""Loading a saved classifier and predicting whole images or cells cut from an image.

A `source: image` model labels a whole image (one Tag with the top class). A `source:
crops` model classifies cells, so it needs the cells' boxes or outlines: `classify_crops`
takes them (from an annotator or a detector); `predict` cannot guess them and refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from labelloop.domain import Shape, Tag
from labelloop.errors import ConfigError, InputError
from labelloop.geometry import shape_bbox
from labelloop.training.classification.data import cut_crop, whole_image
from labelloop.training.classification.evaluate import predict_sample_probs
from labelloop.training.classification.network import build_classifier
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.common import check_images, load_state_dict
from labelloop.training.kind import Prediction


def load_classifier(
    weights: bytes | Path, recipe: ClassificationRecipe, labels: Sequence[str]
) -> nn.Module:
    """The recipe's network with saved weights (read weights-only), eval mode, on CPU."""
    state = load_state_dict(weights)
    model = build_classifier(recipe, len(labels), pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"weights do not fit {recipe.encoder} with {len(labels)} classes: {exc}"
        ) from exc
    return model.eval()


def _counts(labels: Sequence[str], top: Sequence[int]) -> dict[str, int]:
    hist = np.bincount(np.asarray(top, dtype=np.int64), minlength=len(labels))
    return {name: int(hist[i]) for i, name in enumerate(labels)}


def predict(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: ClassificationRecipe,
    labels: Sequence[str],
) -> list[Prediction]:
    """One Prediction per whole image: a Tag with the top label and its probability as
    `score`, arrays["probs"] (C,). Only for `source: image` models."""
    if recipe.source != "image":
        raise ConfigError(
            "this classifier was trained on cell crops (source: crops) and needs the cells' "
            "boxes: use classify_crops(model, image, boxes, ...) instead of whole-image predict"
        )
    check_images(images)
    inputs = [whole_image(img, recipe.image_size) for img in images]
    probs = predict_sample_probs(model, inputs, recipe.batch_size, recipe.views)
    out = []
    for p in probs:
        top = int(p.argmax())
        tag = Tag(label=labels[top], attributes={"score": round(float(p[top]), 6)})
        out.append(
            Prediction(
                shapes=[tag],
                counts=_counts(labels, [top]),
                confidence=float(p[top]),
                arrays={"probs": p.astype(np.float32)},
            )
        )
    return out


def classify_crops(
    model: nn.Module,
    image: np.ndarray,
    boxes: Sequence[Shape],
    recipe: ClassificationRecipe,
    labels: Sequence[str],
) -> Prediction:
    """Classify each region shape (box, polygon, mask, ellipse) of one image.

    Returns the same shapes relabelled with the predicted class and its probability as
    `score`, counts per label, `confidence` = mean top probability (1.0 without shapes),
    and arrays["class_probs"] (N, C) in the order of `boxes`.
    """
    check_images([image])
    crops = []
    for i, shape in enumerate(boxes):
        bbox = shape_bbox(shape)
        if bbox is None or bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
            raise InputError(f"shape {i} ({shape.kind}) has no area to crop")
        try:
            crops.append(cut_crop(image, bbox, recipe.crop_margin, recipe.image_size))
        except ValueError as exc:
            raise InputError(f"shape {i}: {exc}") from exc
    n = len(labels)
    probs = (
        predict_sample_probs(model, crops, recipe.batch_size, recipe.views)
        if crops
        else np.zeros((0, n))
    )
    top = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    shapes: list[Shape] = []
    for shape, p, t in zip(boxes, probs, top, strict=True):
        attrs = {**shape.attributes, "score": round(float(p[t]), 6)}
        shapes.append(shape.model_copy(update={"label": labels[int(t)], "attributes": attrs}))
    return Prediction(
        shapes=shapes,
        counts=_counts(labels, top),
        confidence=float(probs.max(1).mean()) if len(probs) else 1.0,
        arrays={"class_probs": probs.astype(np.float32).reshape(len(crops), n)},
    )
