from __future__ import annotations

import hashlib
import io
import pickle

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelloop.domain import Box, Tag, shapes_to_json
from labelloop.errors import ConfigError, InputError
from labelloop.imaging import encode_png
from labelloop.scoring import available_methods
from labelloop.training.classification.network import build_classifier
from labelloop.training.classification.predict import classify_crops, load_classifier, predict
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.kind import get_kind

LABELS = ["disc", "square"]
KIND = get_kind("classification")


def _draw(img: np.ndarray, cls: int, cx: int, cy: int, r: int) -> Box:
    """A red disc (class 0) or a blue square (class 1) and its box."""
    if cls == 0:
        cv2.circle(img, (cx, cy), r, (220, 40, 40), -1)
        return Box(label="disc", x=cx - r, y=cy - r, w=2 * r + 1, h=2 * r + 1)
    cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), (40, 40, 220), -1)
    return Box(label="square", x=cx - r, y=cy - r, w=2 * r + 1, h=2 * r + 1)


def _scene(rng: np.random.Generator, size: int = 96, n: int = 4) -> tuple[np.ndarray, list[Box]]:
    img = rng.integers(200, 240, (size, size, 3), dtype=np.uint8)
    boxes = []
    for k in range(n):  # one shape per quadrant, so shapes never overlap
        r = int(rng.integers(6, 11))
        qx, qy = (k % 2) * size // 2, (k // 2) * size // 2
        cx, cy = (int(v) for v in rng.integers(r, size // 2 - r, 2))
        boxes.append(_draw(img, int(rng.integers(2)), qx + cx, qy + cy, r))
    return img, boxes


def _manifest(images: list[tuple[np.ndarray, list, str]]) -> tuple[dict, dict]:
    blobs: dict[str, bytes] = {}
    items = []
    for i, (img, shapes, split) in enumerate(images):
        data = encode_png(img)
        key = hashlib.sha256(data).hexdigest()
        blobs[key] = data
        h, w = img.shape[:2]
        items.append(
            {
                "image_id": i,
                "sha256": key,
                "blob_key": key,
                "width": w,
                "height": h,
                "split": split,
                "shapes": shapes_to_json(shapes),
            }
        )
    return {"project": {"task": "classification"}, "labels": LABELS, "items": items}, blobs


def _splits(i: int) -> str:
    return "train" if i % 5 < 3 else "val" if i % 5 == 3 else "test"


FAST = {"encoder": "test_resnet", "image_size": 32, "batch_size": 16, "lr": 5e-3, "seed": 0}


@pytest.fixture(scope="module")
def crops_run(tmp_path_factory):
    rng = np.random.default_rng(1)
    scenes = [_scene(rng) for _ in range(20)]
    manifest, blobs = _manifest([(img, b, _splits(i)) for i, (img, b) in enumerate(scenes)])
    recipe = ClassificationRecipe(source="crops", epochs=4, **FAST)
    events: list[dict] = []
    outcome = KIND.train(
        manifest,
        recipe,
        blobs.__getitem__,
        tmp_path_factory.mktemp("crops"),
        on_progress=events.append,
    )
    return manifest, blobs, recipe, outcome, events


def test_tiny_crop_classifier_separates_discs_from_squares(crops_run):
    manifest, blobs, recipe, outcome, events = crops_run
    finals = [e for e in events if e["final"]]
    assert len(finals) == outcome.epochs_completed == 4
    assert outcome.best_epoch is not None and outcome.metrics["split"] == "val"
    assert outcome.metrics["macro_f1"] == pytest.approx(max(e["val_macro_f1"] for e in finals))
    model = KIND.load(outcome.weights_path, recipe, LABELS)
    test = KIND.evaluate(
        model, manifest, blobs.__getitem__, split="test", labels=LABELS, recipe=recipe
    )
    assert test["n_samples"] == 16 and test["n_images"] == 4
    assert test["accuracy"] > 0.9
    # Training did it: the same network untrained is no better than a coin.
    torch.manual_seed(0)
    untrained = build_classifier(recipe, 2).eval()
    before = KIND.evaluate(
        untrained, manifest, blobs.__getitem__, split="test", labels=LABELS, recipe=recipe
    )
    assert before["macro_f1"] < 0.75
    assert test[KIND.primary_metric] > 0.9
    assert KIND.default_scoring in available_methods("classification")


def test_classify_crops_relabels_given_boxes_and_whole_image_predict_refuses(crops_run):
    _, _, recipe, outcome, _ = crops_run
    model = load_classifier(outcome.weights_path, recipe, LABELS)
    img, boxes = _scene(np.random.default_rng(99))
    truth = [b.label for b in boxes]
    unlabeled = [
        b.model_copy(update={"label": "?", "attributes": {"by": "detector"}}) for b in boxes
    ]
    pred = classify_crops(model, img, unlabeled, recipe, LABELS)
    assert [s.label for s in pred.shapes] == truth
    assert all(
        s.attributes["by"] == "detector" and 0.5 <= s.attributes["score"] <= 1 for s in pred.shapes
    )
    assert [(s.x, s.y, s.w, s.h) for s in pred.shapes] == [(b.x, b.y, b.w, b.h) for b in boxes]
    assert pred.counts == {name: truth.count(name) for name in LABELS}
    assert pred.arrays["class_probs"].shape == (4, 2)
    assert np.allclose(pred.arrays["class_probs"].sum(1), 1.0, atol=1e-5)
    empty = classify_crops(model, img, [], recipe, LABELS)
    assert empty.shapes == [] and empty.arrays["class_probs"].shape == (0, 2)
    with pytest.raises(InputError, match="outside"):
        classify_crops(model, img, [Box(label="?", x=500, y=5, w=5, h=5)], recipe, LABELS)
    with pytest.raises(ConfigError, match="classify_crops"):
        predict(model, [img], recipe=recipe, labels=LABELS)


@pytest.mark.parametrize(
    "mixing",
    # Mixed batches are a harder task: the same few images need more passes.
    [{"epochs": 5}, {"epochs": 10, "mixup_alpha": 0.4, "cutmix_alpha": 1.0}],
    ids=["plain", "mixup_cutmix"],
)
def test_whole_image_classifier_predicts_one_tag_per_image(tmp_path, mixing):
    rng = np.random.default_rng(2)

    def one(cls: int) -> np.ndarray:
        img = rng.integers(200, 240, (40, 48, 3), dtype=np.uint8)
        _draw(
            img, cls, int(rng.integers(14, 34)), int(rng.integers(14, 26)), int(rng.integers(6, 12))
        )
        return img

    classes = [i % 2 for i in range(30)]
    manifest, blobs = _manifest(
        [(one(c), [Tag(label=LABELS[c])], _splits(i)) for i, c in enumerate(classes)]
    )
    recipe = ClassificationRecipe(source="image", **FAST, **mixing)
    outcome = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path)
    model = KIND.load(outcome.weights_path.read_bytes(), recipe, LABELS)
    fresh = [0, 1] * 6
    preds = KIND.predict(model, [one(c) for c in fresh], recipe=recipe, labels=LABELS)
    got = [p.shapes[0].label for p in preds]
    assert sum(g == LABELS[c] for g, c in zip(got, fresh, strict=True)) >= 11
    p = preds[0]
    assert isinstance(p.shapes[0], Tag) and p.arrays["probs"].shape == (2,)
    assert p.confidence == pytest.approx(float(p.arrays["probs"].max()))
    assert p.shapes[0].attributes["score"] == pytest.approx(p.confidence, abs=1e-5)
    assert sum(p.counts.values()) == 1
    with pytest.raises(InputError, match="RGB uint8"):
        KIND.predict(model, [np.zeros((8, 8), np.uint8)], recipe=recipe, labels=LABELS)


class _Payload:
    """Unpickling this runs `marker.touch()`: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.__class__.touch, (self.marker,))


def test_corrupted_or_foreign_weights_are_refused(crops_run, tmp_path):
    _, _, recipe, outcome, _ = crops_run
    good = outcome.weights_path.read_bytes()
    with pytest.raises(InputError, match="weights"):
        load_classifier(good[: len(good) // 2], recipe, LABELS)
    with pytest.raises(InputError, match="weights"):
        load_classifier(b"\x00garbage" * 50, recipe, LABELS)
    marker = tmp_path / "code-ran"
    state = torch.load(io.BytesIO(good), weights_only=True)
    buf = io.BytesIO()
    torch.save({**state, "extra": _Payload(marker)}, buf)
    with pytest.raises(InputError, match="weights"):
        load_classifier(buf.getvalue(), recipe, LABELS)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live under plain pickle
    assert marker.exists()
    with pytest.raises(ConfigError, match="3 classes"):
        load_classifier(good, recipe, [*LABELS, "third"])
    with pytest.raises(ConfigError, match="test_efficientnet"):
        load_classifier(good, recipe.with_overrides({"encoder": "test_efficientnet"}), LABELS)


def test_encoder_weights_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    recipe = ClassificationRecipe(encoder="test_resnet", encoder_weights=str(path))
    net = build_classifier(recipe, 2)
    assert torch.equal(net.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert net.get_classifier().out_features == 2
    missing = recipe.with_overrides({"encoder_weights": str(tmp_path / "nope.pth")})
    with pytest.raises(ConfigError, match="not found"):
        build_classifier(missing, 2)


@pytest.mark.parametrize("encoder", ["lcnet_050", "test_resnet", "test_efficientnet"])
def test_a_fresh_head_starts_with_every_class_equally_likely(encoder):
    # timm initialises the LCNet / EfficientNet heads in +-1/sqrt(num_classes): for two
    # classes, confident arbitrary logits that held malaria runs near chance for epochs.
    torch.manual_seed(0)
    net = build_classifier(ClassificationRecipe(encoder=encoder), 2).train()
    logits = net(torch.rand(6, 3, 32, 32))
    assert torch.allclose(logits, torch.zeros_like(logits))
    F.cross_entropy(logits, torch.tensor([0, 1, 0, 1, 0, 1])).backward()
    head = net.get_classifier()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_a_saved_head_of_the_same_classes_is_kept(tmp_path):
    import timm

    source = timm.create_model("test_resnet", num_classes=1000)
    torch.nn.init.normal_(source.get_classifier().weight)
    path = tmp_path / "full.pth"
    torch.save(source.state_dict(), path)
    net = build_classifier(
        ClassificationRecipe(encoder="test_resnet", encoder_weights=str(path)), 1000
    )
    assert torch.equal(net.get_classifier().weight, source.get_classifier().weight)


def test_training_reads_the_validation_views_once_for_scores_and_calibration(tmp_path, monkeypatch):
    """The validation scores and the calibration both need the trained network's softmax
    on the validation crops; with 8 test-time views each reading was 8 passes more."""
    from labelloop.training.classification import evaluate

    calls: list[int] = []  # one per view: each is a pass over the crops
    original = evaluate._softmax

    def counted(model, crops, batch_size):
        calls.append(len(crops))
        return original(model, crops, batch_size)

    monkeypatch.setattr(evaluate, "_softmax", counted)
    rng = np.random.default_rng(2)
    scenes = [_scene(rng) for _ in range(10)]
    manifest, blobs = _manifest([(img, b, _splits(i)) for i, (img, b) in enumerate(scenes)])
    recipe = ClassificationRecipe(source="crops", epochs=1, tta_views=8, **FAST)
    outcome = KIND.train(manifest, recipe, blobs.__getitem__, tmp_path)
    assert len(calls) == 8 and len(set(calls)) == 1
    assert outcome.metrics["split"] == "val" and "calibration" in outcome.metrics
