"""Building the classifier network: a timm backbone with a fresh head of N classes."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from labelloop.errors import ConfigError
from labelloop.training.classification.recipe import ClassificationRecipe

# Names that mean "the backbone's default pre-trained weights".
_DEFAULT_WEIGHTS = {"imagenet", "default", "pretrained"}


def _pretrained_args(recipe: ClassificationRecipe) -> dict:
    """timm arguments for `encoder_weights`: a default name, a local weights file (for
    machines that cannot reach the hub), or a timm pretrained tag such as "a1_in1k"."""
    weights = recipe.encoder_weights
    if weights is None:
        return {"pretrained": False}
    if weights.lower() in _DEFAULT_WEIGHTS:
        return {"pretrained": True}
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".bin", ".safetensors"}:
        if not path.is_file():
            raise ConfigError(f"encoder_weights file not found: {path}")
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    return {"pretrained": True, "model_name_tag": weights}


def build_classifier(
    recipe: ClassificationRecipe, num_classes: int, *, pretrained: bool = True
) -> nn.Module:
    """The recipe's timm model with `num_classes` outputs (logits).

    `pretrained=False` skips the recipe's encoder_weights: loading saved weights replaces
    them anyway, and prediction must not need the network.
    """
    import timm  # deferred: a segmentation worker never needs it

    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 labels, got {num_classes}")
    args = _pretrained_args(recipe) if pretrained else {"pretrained": False}
    name = recipe.encoder
    tag = args.pop("model_name_tag", None)
    if tag is not None and "." not in name:
        name = f"{name}.{tag}"
    try:
        model = timm.create_model(
            name, num_classes=num_classes, drop_rate=recipe.drop_rate, in_chans=3, **args
        )
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot build timm model {name!r} (weights {recipe.encoder_weights!r}): {exc}"
        ) from exc
    if not args["pretrained"] or model.pretrained_cfg.get("num_classes") != num_classes:
        zero_head(model)
    return model


def zero_head(model: nn.Module) -> None:
    """Start a fresh classifier head at zero: every class equally likely at step 0.

    timm initialises some heads (the MobileNet / EfficientNet / LCNet family) uniformly in
    +-1/sqrt(num_classes), i.e. +-0.7 for two classes: over 1,000+ features that makes
    confident, arbitrary logits that the first epochs spend unlearning (malaria crops,
    lcnet_050: 0.71 validation accuracy after 5 epochs with timm's head, 0.94 with a zero
    one). A zero head gives equal logits; the backbone learns from the second step on."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear | nn.Conv2d):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
