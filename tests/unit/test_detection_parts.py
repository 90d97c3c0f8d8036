"""The detector's parts on hand-made inputs: metrics, letterbox mapping, DFL decoding,
task-aligned assignment, NMS, the mapping of boxes back to the original image and the
length of a training epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from labelloop.training.common import to_input
from labelloop.training.detection.assigner import assign
from labelloop.training.detection.data import (
    FILL,
    DetectionDataset,
    collate,
    letterbox_matrix,
    map_boxes,
    unmap_boxes,
)
from labelloop.training.detection.evaluate import detection_metrics
from labelloop.training.detection.loss import dfl_loss
from labelloop.training.detection.network import DetOutput, box_distances
from labelloop.training.detection.predict import Detections, detect, postprocess
from labelloop.training.detection.recipe import DetectionRecipe
from tests.unit.segmentation_fixtures import LABELS as FIXTURE_LABELS
from tests.unit.segmentation_fixtures import make_manifest

LABELS = ["RBC", "WBC", "Platelets"]


def grid(h: int, w: int, stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres (A, 2) of one level and their strides (A, 1)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    points = torch.stack([xs, ys], -1).reshape(-1, 2) * stride
    return points, torch.full((h * w, 1), float(stride))


def _dets(boxes, scores, labels) -> Detections:
    return Detections(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
        class_probs=np.zeros((len(scores), 3), np.float32),
    )


def test_metrics_perfect_boxes_score_one_overall_and_per_class():
    truth = (
        np.array([[10, 10, 60, 60], [100, 100, 130, 130], [200, 50, 300, 150]], np.float32),
        np.array([0, 2, 1]),
    )
    pred = _dets(truth[0], [0.9, 0.8, 0.7], truth[1])
    m = detection_metrics([pred], [truth], LABELS, score_threshold=0.25)
    assert m["map50"] == m["map"] == 1.0
    for name in LABELS:
        assert m["per_class"][name]["ap50"] == m["per_class"][name]["ap"] == 1.0
        assert m["per_class"][name]["count_mae"] == 0.0


def test_metrics_partly_wrong_boxes_rank_below_one_and_counts_use_the_threshold():
    truth = (np.array([[10, 10, 60, 60], [100, 100, 130, 130]], np.float32), np.array([0, 0]))
    # One exact box, one shifted to IoU ~0.6 (counts at 0.5, not at 0.75), one low-score extra.
    pred = _dets(
        [[10, 10, 60, 60], [106, 100, 136, 130], [300, 300, 320, 320]], [0.9, 0.8, 0.1], [0, 0, 0]
    )
    m = detection_metrics([pred], [truth], LABELS, score_threshold=0.25)
    assert m["map50"] == pytest.approx(1.0)
    assert 0.4 < m["map"] < 0.9
    assert m["per_class"]["RBC"]["count_mae"] == 0.0  # the 0.1 box is not counted
    assert m["per_class"]["WBC"]["ap50"] is None  # no ground truth, no prediction


def test_letterbox_maps_and_unmaps_boxes_exactly():
    m = letterbox_matrix((480, 640), 416)
    boxes = np.array([[0, 0, 640, 480], [100.5, 20, 300, 479]], np.float32)
    mapped = map_boxes(boxes, m)
    assert mapped[0].tolist() == pytest.approx([0, 52, 416, 364])  # centred vertically
    np.testing.assert_allclose(unmap_boxes(mapped, m, (480, 640)), boxes, atol=1e-3)


def test_dfl_targets_decode_to_their_distance_and_minimise_the_loss():
    reg_max = 16
    target = torch.tensor([[3.3, 0.0, 7.5, 14.2]])
    # The distribution DFL trains towards: mass on the two bins either side of each target.
    logits = torch.full((1, 4, reg_max), -30.0)
    for side, t in enumerate(target[0].tolist()):
        left = int(t)
        logits[0, side, left] = np.log(max(1 - (t - left), 1e-12))
        if left + 1 < reg_max:
            logits[0, side, left + 1] = np.log(max(t - left, 1e-12))
    raw = logits.flatten(1)
    assert box_distances(raw, reg_max)[0].tolist() == pytest.approx(target[0].tolist(), abs=1e-3)
    best = dfl_loss(raw, target, reg_max)
    shifted = dfl_loss(logits.roll(1, dims=-1).flatten(1), target, reg_max)
    assert float(best) < float(shifted)


def test_assignment_takes_the_best_aligned_points_inside_each_box():
    points, _ = grid(4, 4)  # stride 8: 4..28
    a = len(points)
    gt = torch.tensor([[[2.0, 2.0, 18.0, 18.0], [10.0, 10.0, 30.0, 30.0]]])  # (1, 2, 4)
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(1, a, 1)
    exact = 0  # point (4, 4) predicts box 0 exactly; point (28, 28) predicts box 1 exactly
    pred[0, exact] = gt[0, 0]
    pred[0, 15] = gt[0, 1]
    scores = torch.full((1, a, 3), 0.5)
    out = assign(
        scores,
        pred,
        points,
        torch.tensor([[1, 2]]),
        gt,
        torch.ones(1, 2, dtype=torch.bool),
        topk=1,
    )
    assert out.foreground[0].nonzero().flatten().tolist() == [exact, 15]
    assert out.labels[0, exact] == 1 and out.labels[0, 15] == 2
    assert out.gt_index[0, 15] == 1
    assert out.boxes[0, 15].tolist() == gt[0, 1].tolist()
    # IoU-aware class targets: the best point of each box gets that box's IoU (1 here).
    assert out.scores[0, exact].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert float(out.scores.sum()) == pytest.approx(2.0)


def test_assignment_ignores_padding_rows():
    points, _ = grid(2, 2)
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 0.0, 0.0]]])
    out = assign(
        torch.full((1, 4, 1), 0.5),
        gt[:, :1].expand(1, 4, 4).clone(),
        points,
        torch.zeros(1, 2, dtype=torch.long),
        gt,
        torch.tensor([[True, False]]),
    )
    assert bool(out.foreground.any()) and bool((out.gt_index == 0).all())


def _dense_assign(scores, pred, points, labels, gt, mask, topk, alpha, beta):
    """The assignment written over every (box, point) pair: the reference the candidate-only
    assigner must reproduce exactly (positives, boxes and class targets)."""
    b, a, c = scores.shape
    m = gt.shape[1]
    x, y = points[:, 0], points[:, 1]
    g = gt.unsqueeze(-1)
    inside = torch.stack([x - g[:, :, 0], y - g[:, :, 1], g[:, :, 2] - x, g[:, :, 3] - y], -1)
    cand = (inside.amin(-1) > 1e-9) & mask.unsqueeze(-1)
    iou = torch.stack([box_iou(gi, pi) for gi, pi in zip(gt, pred, strict=True)])
    iou = iou.clamp(min=0) * cand
    lab = labels.clamp(0, c - 1)
    s = scores.gather(2, lab.unsqueeze(1).expand(b, a, m)).transpose(1, 2)
    align = s.pow(alpha) * iou.pow(beta) * cand
    top = align.topk(min(topk, a), dim=-1).indices
    pos = torch.zeros_like(cand).scatter_(-1, top, True) & cand
    multi = pos.sum(1) > 1
    best = iou.masked_fill(~pos, -1.0).argmax(1)
    only = torch.zeros_like(pos).scatter_(1, best.unsqueeze(1), True)
    pos = torch.where(multi.unsqueeze(1), only, pos)
    fg, idx = pos.any(1), pos.float().argmax(1)
    align = align * pos
    norm = (
        align * (iou * pos).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + 1e-9)
    ).amax(1)
    target = torch.zeros(b, a, c).scatter_(2, lab.gather(1, idx).unsqueeze(-1), norm.unsqueeze(-1))
    return fg, idx, target * fg.unsqueeze(-1)


@pytest.mark.parametrize("seed", range(5))
def test_candidate_only_assignment_equals_the_dense_one_on_crowded_random_fields(seed):
    gen = torch.Generator().manual_seed(seed)
    points, _ = grid(12, 12)  # 96 px field, stride 8
    b, m, a = 3, 14, len(points)

    def boxes(n):  # crowded, overlapping cells 8-40 px wide
        xy = torch.rand(b, n, 2, generator=gen) * 90
        return torch.cat([xy, xy + 8 + torch.rand(b, n, 2, generator=gen) * 32], -1)

    gt, pred = boxes(m), boxes(a)
    scores = torch.rand(b, a, 3, generator=gen)
    labels = torch.randint(0, 3, (b, m), generator=gen)
    mask = torch.rand(b, m, generator=gen) < 0.8
    out = assign(scores, pred, points, labels, gt, mask, topk=5, alpha=0.5, beta=6.0)
    fg, idx, target = _dense_assign(scores, pred, points, labels, gt, mask, 5, 0.5, 6.0)
    assert int(fg.sum()) > 20  # the fields are crowded enough for points to be contested
    assert torch.equal(out.foreground, fg)
    assert torch.equal(out.gt_index[fg], idx[fg])
    assert torch.equal(out.scores, target)


class _OneBox(nn.Module):
    """Emits one confident box at a fixed place in input pixels (a stand-in network)."""

    def __init__(self, box: list[float], size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.box, self.size = box, size

    def forward(self, x: torch.Tensor) -> DetOutput:
        points, strides = grid(self.size // 8, self.size // 8)
        a = len(points)
        cls = torch.full((len(x), a, 3), -20.0)
        x0, y0, x1, y1 = self.box
        centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])
        idx = int(((points - centre) ** 2).sum(-1).argmin())
        cls[:, idx, 1] = 5.0
        p = points[idx]
        dist = torch.tensor([p[0] - x0, p[1] - y0, x1 - p[0], y1 - p[1]]) / strides[idx]
        box = torch.zeros(len(x), a, 4)
        box[:, idx] = torch.log(torch.expm1(dist))  # inverse softplus: reg_max=0 decoding
        return DetOutput(cls, box, points, strides)


def test_detect_maps_boxes_back_to_the_original_image():
    # One view: the stand-in network gives the same box whichever way the image is turned.
    recipe = DetectionRecipe(image_size=160, reg_max=0, batch_size=2, tta_views=1)
    m = letterbox_matrix((120, 160), 160)  # 160x120 image, 20 px grey bars top and bottom
    want = np.array([[40.0, 30.0, 80.0, 90.0]], np.float32)
    model = _OneBox(map_boxes(want, m)[0].tolist(), 160)
    image = np.zeros((120, 160, 3), np.uint8)
    (det,) = detect(model, [image], recipe)
    assert det.labels.tolist() == [1]
    np.testing.assert_allclose(det.boxes, want, atol=1e-3)


def test_postprocess_suppresses_duplicates_per_class_only():
    recipe = DetectionRecipe(image_size=64, reg_max=0, nms_iou=0.5)
    _, strides = grid(2, 1)
    cls = torch.tensor([[[4.0, -9, -9], [-9, 3.0, -9]]])  # same place, two classes
    dist = torch.log(torch.expm1(torch.ones(1, 2, 4)))
    out = postprocess(DetOutput(cls, dist, torch.tensor([[8.0, 8], [8, 8]]), strides), recipe, 0.1)
    assert out[0]["labels"].tolist() == [0, 1]


def test_postprocess_multi_label_ranks_a_point_under_each_likely_class():
    recipe = DetectionRecipe(image_size=64, reg_max=0)
    _, strides = grid(1, 1)
    logits = torch.logit(torch.tensor([[[0.9, 0.3, 0.0001]]]))
    dist = torch.log(torch.expm1(torch.ones(1, 1, 4)))
    out = DetOutput(logits, dist, torch.tensor([[8.0, 8.0]]), strides)
    (single,) = postprocess(out, recipe, 0.1)
    (multi,) = postprocess(out, recipe, 0.1, multi_label=True)
    assert single["labels"].tolist() == [0]
    assert multi["labels"].tolist() == [0, 1]
    assert multi["scores"].tolist() == pytest.approx([0.9, 0.3])


def test_metrics_count_the_kept_boxes_when_given():
    truth = (np.array([[10, 10, 60, 60]], np.float32), np.array([0]))
    ranked = _dets([[10, 10, 60, 60], [10, 10, 60, 60]], [0.9, 0.4], [0, 1])
    kept = _dets([[10, 10, 60, 60]], [0.9], [0])
    both = detection_metrics([ranked], [truth], LABELS, score_threshold=0.25)
    assert both["per_class"]["WBC"]["count_mae"] == 1.0
    m = detection_metrics([ranked], [truth], LABELS, score_threshold=0.25, counted=[kept])
    assert m["per_class"]["WBC"]["count_mae"] == 0.0 and m["map50"] == 1.0


@pytest.mark.parametrize("reg_max", [0, 16])
def test_fresh_head_predicts_boxes_a_few_cells_wide_at_every_level(reg_max):
    from labelloop.training.detection.network import build_detector, decode_boxes

    recipe = DetectionRecipe(
        encoder="resnet10t", image_size=64, neck_channels=8, head_channels=8, reg_max=reg_max
    )
    torch.manual_seed(0)
    net = build_detector(recipe, 3).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 64))
    boxes = decode_boxes(out, reg_max)[0]
    widths = (boxes[:, 2] - boxes[:, 0]) / out.strides[:, 0]
    # Random weights add noise; the biases put the mean near 4 cells (uniform DFL: 15).
    assert 2.5 < float(widths.mean()) < 5.5


def test_count_thresholds_are_chosen_per_class_on_validation_counts():
    from labelloop.training.detection.evaluate import choose_count_thresholds

    # RBC: 3 true per image, the detector finds them at 0.6+ and adds clutter at 0.3-0.4;
    # WBC: 1 true per image, found only at 0.2 (below the fixed 0.25).
    rbc = [0.9, 0.8, 0.65, 0.4, 0.3]
    dets = [_dets(np.zeros((6, 4)), [*rbc, 0.2], [0, 0, 0, 0, 0, 1]) for _ in range(2)]
    truths = [np.array([0, 0, 0, 1])] * 2
    chosen = choose_count_thresholds(dets, truths, LABELS, default=0.25)
    assert 0.4 < chosen["RBC"] <= 0.65 and chosen["WBC"] <= 0.2
    assert chosen["Platelets"] == 0.25  # no true platelets: the default stays


def test_kept_boxes_follow_their_class_count_threshold():
    from labelloop.training.detection.predict import count_floor, keep_counted

    recipe = DetectionRecipe(count_thresholds={"RBC": 0.5, "WBC": 0.1})
    assert count_floor(recipe) == 0.1
    det = _dets(np.zeros((4, 4)), [0.6, 0.3, 0.15, 0.3], [0, 0, 1, 2])
    kept = keep_counted(det, recipe, LABELS)
    assert kept.labels.tolist() == [0, 1, 2]  # RBC 0.3 dropped, WBC 0.15 kept, Platelets 0.3
    with pytest.raises(ValueError, match="count_thresholds"):
        DetectionRecipe(count_thresholds={"RBC": 1.5})


def test_eight_view_tta_gives_a_turned_image_the_turned_predictions():
    """Averaged over all eight views, what a point predicts cannot depend on how the image
    was turned: the turned image's point at (y, S - x) holds the same scores, and its box
    turned. Wrong point order or a box left unturned breaks this at most points."""
    from labelloop.training.detection.network import build_detector
    from labelloop.training.detection.predict import point_predictions

    size = 64
    recipe = DetectionRecipe(
        encoder="resnet10t", image_size=size, neck_channels=8, head_channels=8, tta_views=8
    )
    torch.manual_seed(0)
    net = build_detector(recipe, 3).eval()
    with torch.no_grad():  # far from a fresh head's near-constant, symmetric boxes
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    x = torch.rand(1, 3, size, size)
    for turned, to_turned in [
        (torch.rot90(x, 1, dims=(-2, -1)), lambda px, py: (py, size - px)),  # one turn left
        (x.flip(-1), lambda px, py: (size - px, py)),  # mirrored
    ]:
        with torch.no_grad():
            probs, boxes = point_predictions(net, x, recipe)
            probs_t, boxes_t = point_predictions(net, turned, recipe)
            points = net(x).points
        where = {(float(px), float(py)): i for i, (px, py) in enumerate(points.tolist())}
        # Points repeat across levels at no position here, so the lookup is unique.
        assert len(where) == len(points)
        for i, (px, py) in enumerate(points.tolist()):
            j = where[to_turned(px, py)]
            torch.testing.assert_close(probs_t[0, j], probs[0, i], atol=1e-5, rtol=1e-4)
            x0, y0 = to_turned(float(boxes[0, i, 0]), float(boxes[0, i, 1]))
            x1, y1 = to_turned(float(boxes[0, i, 2]), float(boxes[0, i, 3]))
            want = torch.tensor([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
            torch.testing.assert_close(boxes_t[0, j], want, atol=1e-3, rtol=1e-4)


def test_each_view_puts_its_scores_back_where_the_points_lie_unturned():
    """View by view (the n-view mean less the (n-1)-view mean isolates view n), the scores
    equal the network's output on the turned image with each level's grid turned back."""
    from labelloop.training.detection.network import build_detector
    from labelloop.training.detection.predict import point_predictions
    from labelloop.training.passes import DIHEDRAL, unmap_probs

    size = 64
    recipe = DetectionRecipe(encoder="resnet10t", image_size=size, neck_channels=8, head_channels=8)
    torch.manual_seed(0)
    net = build_detector(recipe, 3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
        x = torch.rand(1, 3, size, size)
        means = [
            point_predictions(net, x, recipe.model_copy(update={"tta_views": n}))[0]
            for n in range(1, 9)
        ]
        for n, (flip, k) in enumerate(DIHEDRAL, start=1):
            alone = means[n - 1] * n - (means[n - 2] * (n - 1) if n > 1 else 0)
            out = net(torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1)))
            probs, want, at = out.cls_logits.sigmoid()[0], [], 0
            for stride in (8, 16, 32):
                side = size // stride
                grid = probs[at : at + side * side].T.reshape(-1, side, side)
                want.append(unmap_probs(grid, flip, k).reshape(grid.shape[0], -1).T)
                at += side * side
            torch.testing.assert_close(alone[0], torch.cat(want), atol=1e-5, rtol=1e-4)


def test_one_view_tta_is_the_plain_prediction():
    from labelloop.training.detection.network import build_detector, decode_boxes
    from labelloop.training.detection.predict import point_predictions

    recipe = DetectionRecipe(
        encoder="resnet10t", image_size=64, neck_channels=8, head_channels=8, tta_views=1
    )
    torch.manual_seed(0)
    net = build_detector(recipe, 3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        probs, boxes = point_predictions(net, x, recipe)
        out = net(x)
    torch.testing.assert_close(probs, out.cls_logits.sigmoid())
    torch.testing.assert_close(boxes, decode_boxes(out, recipe.reg_max))


def test_each_scoring_view_is_one_forward_pass_whatever_the_recipe_averages():
    """The multi-pass scores compare single views with the plain prediction: a view that
    averaged views of its own would blur what they measure and multiply their cost."""
    from labelloop.training.detection.network import build_detector
    from labelloop.training.detection.views import detection_views

    recipe = DetectionRecipe(encoder="resnet10t", image_size=64, neck_channels=8, head_channels=8)
    assert recipe.views > 1  # the default averages views
    torch.manual_seed(0)
    net = build_detector(recipe, 3).eval()
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    images = [np.zeros((48, 64, 3), np.uint8)] * 2
    views = detection_views(net, images, recipe=recipe, labels=LABELS, mode="tta", passes=3)
    assert [len(v) for v in views] == [3, 3]
    assert len(calls) == 3  # one batch of both images per view


def test_default_epoch_draws_each_training_image_twice_and_validates_each_once():
    """`repeats` 2 with `epochs` 50 (BENCHMARKS.md: validating half as often) keeps the
    100 passes over the training images that 100 epochs of 1 made; validation and
    evaluation still see each image once."""
    manifest, blobs = make_manifest({"train": 3})
    items, recipe = manifest["items"], DetectionRecipe(image_size=64)
    assert (recipe.repeats, recipe.epochs * recipe.repeats) == (2, 100)
    train = DetectionDataset(items, FIXTURE_LABELS, blobs.__getitem__, recipe, train=True)
    held_out = DetectionDataset(items, FIXTURE_LABELS, blobs.__getitem__, recipe)
    assert (len(train), len(held_out)) == (6, 3)
    image, boxes, classes = train[5]
    assert image.shape == (3, 64, 64) and len(boxes) == len(classes)


def test_neck_growth_widens_the_coarser_levels_and_one_keeps_every_level_alike():
    from labelloop.training.detection.network import build_detector, level_widths

    assert level_widths(96, 1.0) == [96, 96, 96]
    assert level_widths(64, 2.0) == [64, 128, 256]  # YOLOv8n's neck
    assert level_widths(96, 1.5) == [96, 144, 216]
    x = torch.zeros(1, 3, 64, 64)
    nets = [
        build_detector(
            DetectionRecipe(
                encoder="resnet10t",
                image_size=64,
                neck_channels=8,
                head_channels=8,
                neck_growth=growth,
            ),
            3,
        ).eval()
        for growth in (1.0, 2.0)
    ]
    with torch.no_grad():
        feats = [net.neck(net.backbone(x)) for net in nets]
        outs = [net(x) for net in nets]
    assert [f.shape[1] for f in feats[0]] == [8, 8, 8]
    assert [f.shape[1] for f in feats[1]] == [8, 16, 32]
    # The head reads each level at its own width: the same points and outputs either way.
    assert outs[0].cls_logits.shape == outs[1].cls_logits.shape
    assert outs[0].box_raw.shape == outs[1].box_raw.shape


def test_unset_neck_growth_leaves_a_recorded_recipe_its_hash():
    recipe = DetectionRecipe()
    # A recipe dumped before the field existed: the same hash, the same network.
    old = {k: v for k, v in recipe.model_dump(mode="json").items() if k != "neck_growth"}
    assert DetectionRecipe.from_dict(old).recipe_hash() == recipe.recipe_hash()
    assert "neck_growth" not in recipe.canonical_json()
    assert recipe.with_overrides({"neck_growth": 1.5}).recipe_hash() != recipe.recipe_hash()


def test_mosaic_image_size_trains_small_while_mosaic_is_on_then_at_image_size():
    """Progressive resizing: the mosaic phase draws the smaller inputs, the closing phase
    and held-out images the recipe's image_size, with boxes inside each input."""
    manifest, blobs = make_manifest({"train": 3})
    items = manifest["items"]
    recipe = DetectionRecipe(image_size=96, mosaic_image_size=64)
    train = DetectionDataset(items, FIXTURE_LABELS, blobs.__getitem__, recipe, train=True)
    held_out = DetectionDataset(items, FIXTURE_LABELS, blobs.__getitem__, recipe)
    for on, side in ((True, 64), (False, 96)):
        train.set_mosaic(on)
        for i in range(len(train)):
            image, boxes, _ = train[i]
            assert image.shape == (3, side, side)
            assert bool((boxes >= 0).all() and (boxes <= side).all())
    assert held_out[0][0].shape == (3, 96, 96)
    # image_size itself trains at one size throughout.
    one_size = DetectionRecipe(image_size=96, mosaic_image_size=96)
    train = DetectionDataset(items, FIXTURE_LABELS, blobs.__getitem__, one_size, train=True)
    assert train[0][0].shape == (3, 96, 96)


@pytest.mark.parametrize(
    ("fields", "side"),
    [
        ({}, 320),  # the default: three quarters of 416
        ({"image_size": 640}, 480),
        ({"image_size": 256}, 192),
        ({"image_size": 64}, 64),  # 48 rounds to 64: no smaller multiple of 32 nearer
        ({"close_mosaic": 0.0}, 416),  # no closing phase to train at image_size in
        ({"mosaic_image_size": 416}, 416),
    ],
)
def test_unset_mosaic_image_size_is_three_quarters_of_image_size(fields, side):
    assert DetectionRecipe(**fields).mosaic_side == side


@pytest.mark.parametrize(
    ("fields", "reason"),
    [({"mosaic_image_size": 100}, "multiple of 32"), ({"close_mosaic": 0.0}, "close_mosaic")],
)
def test_mosaic_image_size_refuses_what_it_cannot_train(fields, reason):
    with pytest.raises(ValueError, match=reason):
        DetectionRecipe(image_size=96, **{"mosaic_image_size": 64, **fields})


def test_collate_pads_a_batch_drawn_across_the_size_switch_without_moving_boxes():
    small = (torch.zeros(3, 64, 64), torch.tensor([[1.0, 2.0, 30.0, 40.0]]), torch.tensor([1]))
    large = (torch.ones(3, 96, 96), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    images, boxes, classes, mask = collate([small, large])
    assert images.shape == (2, 3, 96, 96)
    assert bool((images[0, :, :64, :64] == 0).all())
    grey = torch.from_numpy(to_input(np.full((1, 1, 3), FILL, np.uint8)))[:, 0, 0]
    torch.testing.assert_close(images[0, :, 80, 10], grey)
    torch.testing.assert_close(boxes[0, 0], small[1][0])
    assert classes[0, 0].item() == 1
    assert mask.tolist() == [[True], [False]]
