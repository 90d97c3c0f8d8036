"""Instances of touching cells: targets that teach a network where cells meet, the
watershed that splits its output back into one region per cell, and matching for scoring.

A semantic label map merges touching cells of one class into one blob, so counts read off
it are a lower bound. In instance mode the network instead learns three kinds of pixel per
label: background, a cell's interior, and a cell's contour (its outermost pixel ring,
including where it touches another cell). Interiors of touching cells are then separated
by two contour pixels; each interior blob seeds a watershed that grows back over the
contour, giving every cell its full extent.

The network rarely closes the thin contour between touching cells everywhere, and then two
interiors join at a neck and count once; it also leaves specks and fragments. How the
output is read is therefore tunable per label and chosen on the validation split
(`choose_instance_rules`, stored in the model version's recipe): a split depth that cuts
interior blobs at their necks (distance-transform h-maxima), or an opening that cuts the
narrow bridges a gap in a predicted membrane leaves (cells of irregular shape, whose many
distance maxima a split depth would cut too), and a minimum area below which a seed is
flooded by the cell around it and an instance is dropped. Whatever the reading, a blob
larger than the largest annotated object of its label is cut at its deepest neck
(`cut_oversized`), since no single cell of that label was ever seen that large. A label
whose cells rarely touch (platelets, often WBCs) may instead be read as the connected components
of its own pixels: the watershed of the other labels then cannot swallow a small cell
beside a large one, nor a cell whose pixels its label shares with another take that
label and be dropped as too small for it.

An instance map is int32 (H, W): 0 = background, 1..N = instances; `classes[i]` is the
1-based label index of instance i (classes[0] = 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, h_maxima
from skimage.segmentation import watershed

from labelloop.domain import Mask, Shape
from labelloop.geometry import shape_mask
from labelloop.objects import DEFAULT_MIN_AREA, EDGE_AREA_SHARE, WHOLE_OBJECT, area_allowed

REGION_KINDS = frozenset({"mask", "polygon", "ellipse"})
_EIGHT = np.ones((3, 3), bool)


def rasterize_instances(
    shapes: Sequence[Shape],
    labels: Sequence[str],
    height: int,
    width: int,
    kinds: frozenset[str] = REGION_KINDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance map and classes from region shapes, painted like `rasterize_classes`
    (largest first, so a small cell touching a large one keeps its pixels).

    A polygon or ellipse is one instance; a mask is one instance per connected part, since
    masks often come from class-region PNGs where one file holds every cell of a class,
    unless it says it is one object (`objects.WHOLE_OBJECT`, a per-object mask file).
    Instances painted over entirely are dropped.
    """
    index = {name: i + 1 for i, name in enumerate(labels)}
    regions: list[tuple[int, int, np.ndarray]] = []
    for s in shapes:
        if s.kind not in kinds or s.label not in index:
            continue
        m = shape_mask(s, height, width)
        if m is None or not m.any():
            continue
        if isinstance(s, Mask) and not s.attributes.get(WHOLE_OBJECT):
            comp, n = ndimage.label(m, structure=_EIGHT)
            for j in range(1, n + 1):
                part = comp == j
                regions.append((int(part.sum()), index[s.label], part))
        else:
            regions.append((int(m.sum()), index[s.label], m))
    inst = np.zeros((height, width), np.int32)
    cls = [0]
    for _, c, m in sorted(regions, key=lambda r: -r[0]):
        cls.append(c)
        inst[m] = len(cls) - 1
    return _relabel(inst, np.asarray(cls, np.int32))


def contour_mask(inst: np.ndarray) -> np.ndarray:
    """Instance pixels with an 8-neighbour of another instance or of background."""
    hi = ndimage.maximum_filter(inst, size=3, mode="nearest")
    lo = ndimage.minimum_filter(inst, size=3, mode="nearest")
    return (inst > 0) & ((hi != inst) | (lo != inst))


def instance_targets(inst: np.ndarray, classes: np.ndarray, n_labels: int) -> np.ndarray:
    """uint8 training target: 0 background, l = interior of label l, n_labels + l = contour
    of label l (l in 1..n_labels)."""
    target = classes[inst].astype(np.uint8)
    contour = contour_mask(inst)
    target[contour] += n_labels
    return target


class Seeded(NamedTuple):
    """What `instances_from_probs` reads before any minimum area: each pixel's most likely
    class, the labels read as components (bool, indexed by label) and each label's
    interior seeds (None for those)."""

    top: np.ndarray
    apart: np.ndarray
    seeds: list[np.ndarray | None]
    contour: np.ndarray  # summed contour probability (H, W), what the watershed floods
    per_label: np.ndarray  # interior + contour probability per label (L, H, W)
    split_area: np.ndarray  # per label (indexed by label), `cut_oversized`'s bound


def seed_maps(
    probs: np.ndarray,
    n_labels: int,
    *,
    split_depth: float | Sequence[float] = 0.0,
    opening: int | Sequence[int] = 0,
    components: bool | Sequence[bool] = False,
    split_area: int | Sequence[int] = 0,
    seed_threshold: float | Sequence[float] = 0.0,
) -> Seeded:
    """The seeds of `instances_from_probs` (see there), which cost most of its time."""
    if probs.ndim != 3 or probs.shape[0] != 1 + 2 * n_labels:
        raise ValueError(
            f"expected instance probabilities of shape ({1 + 2 * n_labels}, H, W) for "
            f"{n_labels} labels, got {probs.shape}"
        )
    depths = _per_label(split_depth, n_labels, "split_depth")
    openings = _per_label(opening, n_labels, "opening").astype(int)
    apart = _per_label(components, n_labels, "components").astype(bool)
    apart[0] = False
    largest = _per_label(split_area, n_labels, "split_area").astype(int)
    sure = _per_label(seed_threshold, n_labels, "seed_threshold")
    top = probs.argmax(axis=0)
    seeds = [
        None
        if apart[lab]
        else cut_oversized(
            interior_seeds(
                probs[lab] >= sure[lab] if sure[lab] > 0 else top == lab,
                float(depths[lab]),
                int(openings[lab]),
            ),
            int(largest[lab]),
        )
        for lab in range(1, n_labels + 1)
    ]
    contours = probs[1 + n_labels :]
    per_label = probs[1 : 1 + n_labels] + contours
    return Seeded(top, apart, seeds, contours.sum(axis=0), per_label, largest)


def instances_from_probs(
    probs: np.ndarray,
    n_labels: int,
    *,
    min_area: int | Sequence[int] = DEFAULT_MIN_AREA,
    split_depth: float | Sequence[float] = 0.0,
    components: bool | Sequence[bool] = False,
    opening: int | Sequence[int] = 0,
    split_area: int | Sequence[int] = 0,
    seed_threshold: float | Sequence[float] = 0.0,
    edge_share: float | Sequence[float] = EDGE_AREA_SHARE,
    seeded: Seeded | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the network's instance-mode softmax (1 + 2L, H, W) into instances.

    Foreground is every pixel whose most likely class is not background. Each label's
    interior pixels (those whose most likely class is its interior or, with a
    `seed_threshold` above 0, those whose interior probability reaches it) are cut into
    seeds (`interior_seeds`); seeds of at least half the
    label's `min_area` start a watershed over the foreground, flooding from low to high
    contour probability, so a smaller seed (a fragment of a cell) is flooded by the cell
    around it instead of counting on its own. Foreground no seed reaches (e.g. a cell so
    small it is all contour) becomes an instance of its own. Every instance then takes the
    label with the most interior + contour probability over its pixels (a cell is one
    label even where a few of its pixels lean to another), and instances smaller than
    their label's `min_area` pixels are dropped.

    A label with `components` set is read apart: its instances are the 8-connected
    components of the pixels whose most likely class is its interior or contour (cut like
    seeds where larger than the split area), they take that label, and those pixels are
    out of the watershed (no seed, no flooding).

    A seed (or component) larger than its label's `split_area` (pixels; 0: no bound) is
    cut at its deepest neck until every part is within it or has no neck
    (`cut_oversized`).

    A seed threshold is a third way to part cells the network joined through a gap in
    their membrane: in the gap the interior is the most likely class but by a thin margin,
    so a threshold of 0.7 leaves the bridge out of the seeds while the cells' cores stay in
    (on ISBI cells, six networks read at two minimum areas, it raised instance F1@0.5 by
    0.003-0.038 and brought the count closer every time). The pixels below the threshold
    are still foreground, flooded by the watershed.

    A seed or instance on the image's edge is held to `edge_share` of its label's minimum
    area (`objects.EDGE_AREA_SHARE`): the edge cuts cells, one whose centre is in view
    shows about half of itself or more, and the minimum area is chosen among whole cells.

    `min_area`, `split_depth`, `opening`, `components`, `split_area`, `seed_threshold`
    and `edge_share` are one value for every label or one per label (the per-label values
    a model version stores in its recipe, chosen on validation). `seeded`, the `seed_maps`
    of these probabilities, replaces the split depth, opening, components, split area and
    seed threshold: made once, it serves several minimum areas and edge shares (the seeds
    do not depend on them).
    """
    if seeded is None:
        seeded = seed_maps(
            probs,
            n_labels,
            split_depth=split_depth,
            opening=opening,
            components=components,
            split_area=split_area,
            seed_threshold=seed_threshold,
        )
    areas_min = _per_label(min_area, n_labels, "min_area")
    shares = _per_label(edge_share, n_labels, "edge_share")
    apart, top = seeded.apart, seeded.top
    # The label of each pixel's most likely class (interiors 1..L, contours L+1..2L).
    pixel_label = np.where(top > 0, (top - 1) % n_labels + 1, 0)
    fg = (top > 0) & ~apart[pixel_label]
    markers = np.zeros(top.shape, np.int32)
    n_seeds = 0
    for lab, seeds in enumerate(seeded.seeds, 1):
        if seeds is None or seeds.max(initial=0) == 0:
            continue
        areas = np.bincount(seeds.ravel())
        need = np.where(on_edge(seeds, len(areas) - 1), shares[lab], 1.0) * areas_min[lab] / 2
        keep = np.flatnonzero(areas[1:] >= np.maximum(1, need[1:])) + 1
        lut = np.zeros(len(areas), np.int32)
        lut[keep] = np.arange(n_seeds + 1, n_seeds + 1 + len(keep), dtype=np.int32)
        markers = np.where(seeds > 0, lut[seeds], markers)
        n_seeds += len(keep)
    inst = watershed(seeded.contour, markers, mask=fg) if n_seeds else np.zeros_like(markers)
    inst = inst.astype(np.int32)
    rest, n = ndimage.label(fg & (inst == 0), structure=_EIGHT)
    if n:
        inst[rest > 0] = rest[rest > 0] + n_seeds
    n_inst = n_seeds + n
    # Per label, the summed interior + contour probability over each instance; labels
    # read apart are not open to the watershed's instances.
    flat = inst.ravel()
    score = np.array(
        [np.bincount(flat, weights=w.ravel(), minlength=n_inst + 1)[1:] for w in seeded.per_label]
    ).reshape(n_labels, n_inst)
    score[apart[1:]] = -np.inf
    fixed = [score.argmax(axis=0) + 1]
    for lab in np.flatnonzero(apart):
        parts, _ = ndimage.label(pixel_label == lab, structure=_EIGHT)
        parts = cut_oversized(parts, int(seeded.split_area[lab]))
        k = int(parts.max(initial=0))
        if k:
            inst[parts > 0] = parts[parts > 0] + n_inst
            fixed.append(np.full(k, lab))
            n_inst += k
    if n_inst == 0:
        return inst, np.zeros(1, np.int32)
    classes = np.concatenate([[0], *fixed]).astype(np.int32)
    areas = np.bincount(inst.ravel(), minlength=n_inst + 1)
    need = areas_min[classes] * np.where(on_edge(inst, n_inst), shares[classes], 1.0)
    small = np.flatnonzero(areas < need)
    small = small[small > 0]
    if small.size:
        inst[np.isin(inst, small)] = 0
    return _relabel(inst, classes)


def on_edge(inst: np.ndarray, n: int) -> np.ndarray:
    """bool (n + 1,): whether instance k of `inst` (ids 1..n) has a pixel on the image's
    outermost rows or columns (index 0, background, is False)."""
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]])] = True
    edge[0] = False
    return edge


SPLIT_DEPTHS = (0.0, 0.5, 1.0, 2.0, 3.0)
OPENINGS = (1, 2, 3, 4, 6)
MIN_AREAS = (4, 8, 16, 32, 64, 128, 256, 512)
# Interior probabilities a seed must reach (0: the most likely class is enough).
SEED_THRESHOLDS = (0.6, 0.7, 0.8)


class InstanceRules(NamedTuple):
    """Instance mode's reading per label (one value per label, in label order)."""

    min_area: list[int]
    split_depth: list[float]
    components: list[bool]
    opening: list[int]
    seed_threshold: list[float]


RuleKey = tuple[int, int, float, int, float, int]


def rule_key(
    error: int, components: bool, depth: float, opening: int, threshold: float, min_area: int
) -> RuleKey:
    """The order `choose_instance_rules` prefers readings in, lowest first: the count
    error, then the watershed before components, the shallower split, the smaller
    opening, the lower seed threshold, the larger minimum area (why: its docstring).
    One key, so that a benchmark that finds the choice among its own readings orders
    them as the choice does."""
    return (
        int(error),
        int(components),
        float(depth),
        int(opening),
        float(threshold),
        -int(min_area),
    )


def choose_instance_rules(
    probs: Sequence[np.ndarray],
    true_counts: Sequence[Sequence[int]],
    n_labels: int,
    *,
    area_caps: Sequence[float] | None = None,
    split_depths: Sequence[float] = SPLIT_DEPTHS,
    openings: Sequence[int] = OPENINGS,
    seed_thresholds: Sequence[float] = SEED_THRESHOLDS,
    min_areas: Sequence[int] = MIN_AREAS,
    use: np.ndarray | None = None,
    cuts: Sequence[bool] | None = None,
    edge_share: float | Sequence[float] = EDGE_AREA_SHARE,
) -> InstanceRules:
    """Per label, the reading (the watershed with a split depth, an opening of the seeds
    or a seed threshold, or connected components), and the minimum area, whose instance
    counts on the given (validation) images are closest to the annotated counts
    (`true_counts[i][l]`, image i, label l), summed over images as |predicted - true|.

    `area_caps` (per label) bounds the minimum area: a count can come out right with a
    minimum area that drops real cells while other errors add instances, and on three
    validation slices that chose 256 px for ISBI cells and lost a third of the test
    cells. A minimum area above the label's cap is not tried (the smallest candidate
    always is). `use` (bool (images, labels)) leaves an image out of a label's error
    (one chosen on more images than the others, `evaluate.rule_basis`); a label whose
    `cuts` entry is False is read without neck cuts (no split depth, opening or seed
    threshold); `edge_share` is the reading's share of the minimum area for cells on the
    image's edge (`instances_from_probs`). Ties go to the watershed (components merge
    touching cells), to the shallower split, the smaller opening and the lower threshold
    (a cut the counts do not ask for can only break cells) and then to the larger
    minimum area: the most noise dropped that costs no annotated cell. Each label is
    judged with every label read the same way: an approximation, as a label's count
    depends little on how the others are read.
    """
    truth = np.asarray(true_counts, np.int64).reshape(len(probs), n_labels)
    weight = np.ones_like(truth) if use is None else np.asarray(use, np.int64)
    # One slot per label: a cap may skip a label's first candidates, so labels do not
    # all find their first candidate in the same round.
    # Per label the best `rule_key` so far: the order ties are broken in, and all the
    # reading it names.
    best: list[RuleKey | None] = [None] * n_labels
    # One neck cutter at a time: a split depth, an opening or a seed threshold (two
    # together cut twice).
    readings = [(False, d, 0, 0.0) for d in split_depths]
    readings += [(False, 0.0, r, 0.0) for r in openings if r > 0]
    readings += [(False, 0.0, 0, t) for t in seed_thresholds if t > 0] + [(True, 0.0, 0, 0.0)]
    if cuts is not None and not any(cuts):  # no label may be cut: read no cut at all
        readings = [(a, d, r, t) for a, d, r, t in readings if d <= 0 and r <= 0 and t <= 0]
    for apart, depth, radius, sure in readings:
        seeded = [
            seed_maps(
                p,
                n_labels,
                split_depth=depth,
                opening=radius,
                components=apart,
                seed_threshold=sure,
            )
            for p in probs
        ]
        for area in min_areas:
            error = _count_errors(
                (
                    instances_from_probs(
                        p, n_labels, min_area=area, edge_share=edge_share, seeded=s
                    )[1]
                    for p, s in zip(probs, seeded, strict=True)
                ),
                truth,
                weight,
            )
            cut = depth > 0 or radius > 0 or sure > 0
            for lab in range(n_labels):
                if area_caps is not None and not area_allowed(area, area_caps[lab], min_areas):
                    continue
                if cut and cuts is not None and not cuts[lab]:
                    continue
                key = rule_key(error[lab], apart, depth, radius, sure, area)
                held = best[lab]
                if held is None or key < held:
                    best[lab] = key
    chosen = [b for b in best if b is not None]
    if len(chosen) != n_labels:
        raise ValueError("no split depths or minimum areas to choose from")
    return InstanceRules(
        [-int(b[5]) for b in chosen],
        [float(b[2]) for b in chosen],
        [bool(b[1]) for b in chosen],
        [int(b[3]) for b in chosen],
        [float(b[4]) for b in chosen],
    )


def choose_split_areas(
    probs: Sequence[np.ndarray],
    true_counts: Sequence[Sequence[int]],
    n_labels: int,
    rules: InstanceRules,
    largest: Sequence[int],
    *,
    use: np.ndarray | None = None,
    edge_share: float | Sequence[float] = EDGE_AREA_SHARE,
) -> list[int]:
    """Per label, `largest` (pixels; 0 for none: the bound `evaluate.tune_instance_rules`
    takes from the annotated objects) as the area above which `cut_oversized` cuts a seed
    or component, or 0 (no cut) where reading
    these images with the cut counts them further from `true_counts` (summed
    |predicted - true| over the images `use` keeps, as in `choose_instance_rules`) than
    reading them without. A tie keeps the cut: these images rarely hold a blob larger than
    every annotated object of its label, and one that new images hold is two cells far
    more often than one."""
    truth = np.asarray(true_counts, np.int64).reshape(len(probs), n_labels)
    weight = np.ones_like(truth) if use is None else np.asarray(use, np.int64)
    gates = [int(a) for a in largest]
    if not any(gates):
        return gates
    uncut, cut = (
        _count_errors(
            (
                instances_from_probs(
                    p, n_labels, **rules._asdict(), split_area=a, edge_share=edge_share
                )[1]
                for p in probs
            ),
            truth,
            weight,
        )
        for a in ([0] * n_labels, gates)
    )
    return [g if c <= u else 0 for g, u, c in zip(gates, uncut, cut, strict=True)]


def _count_errors(
    classes: Iterable[np.ndarray], truth: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Per label, |instances found - annotated| summed over the images (`classes`, one
    instance-class array per image, in the rows of `truth`), each weighted by `weight`
    (int (images, labels), 0 leaves an image out of a label's error)."""
    n_labels = truth.shape[1]
    found = np.array([np.bincount(c[1:], minlength=n_labels + 1)[1:] for c in classes])
    return (np.abs(found.reshape(truth.shape) - truth) * weight).sum(axis=0)


def interior_seeds(interior: np.ndarray, split_depth: float = 0.0, opening: int = 0) -> np.ndarray:
    """Seeds (int32 map, 0 = none) from one label's interior pixels (bool (H, W)).

    Without `split_depth` or `opening` each 8-connected interior blob is one seed. A
    network often leaves a gap in the thin contour between touching cells, so two
    interiors join at a neck; two ways cut it, chosen per label on validation:
    - `opening` > 0 (pixels): a morphological opening with a disk of that radius removes
      every bridge narrower than its diameter (a gap in a predicted membrane) before the
      blobs are labelled. The watershed gives the removed pixels back to the cells on
      either side; a sliver the opening erases whole has no seed of its own (kept as one,
      slivers became false cells on ISBI) and joins a neighbour or, where no seed reaches
      it, becomes an instance of its own.
    - `split_depth` > 0: each maximum of the distance to the blob's edge that rises at
      least `split_depth` pixels above the neck joining it to a higher one becomes a seed
      (h-maxima), and the blob is shared among them by a watershed of that distance. A
      single round cell has one maximum and stays whole; blobs too thin to have a maximum
      of that height stay whole too. Irregular cells have several maxima, which is why
      the opening suits them better (EM sections of neurites).
    """
    if opening > 0:
        interior = ndimage.binary_opening(interior, structure=disk(opening))
    blobs, n = ndimage.label(interior, structure=_EIGHT)
    if n == 0 or split_depth <= 0:
        return blobs.astype(np.int32)
    dist = ndimage.distance_transform_edt(interior)
    peaks, n_peaks = ndimage.label(h_maxima(dist, split_depth), structure=_EIGHT)
    seeds = watershed(-dist, peaks, mask=interior).astype(np.int32)
    unseeded = interior & (seeds == 0)
    if unseeded.any():
        rest, _ = ndimage.label(unseeded, structure=_EIGHT)
        seeds[unseeded] = rest[unseeded] + n_peaks
    return seeds


# Neck depths (pixels of the distance to a blob's edge, deepest first) at which
# `cut_oversized` tries to cut a blob; below the last, a blob counts as having no neck.
NECK_DEPTHS = (16.0, 12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.0)


def cut_oversized(seeds: np.ndarray, split_area: int) -> np.ndarray:
    """`seeds` (int32 map) with every seed of more than `split_area` pixels cut at its
    deepest neck, over and over until each part is within the area or has no neck of
    `NECK_DEPTHS[-1]` px; unchanged when `split_area` is 0.

    The neck is where the blob's distance-transform maxima part at the greatest depth
    (h-maxima, the deepest `NECK_DEPTHS` that leaves two or more), and the blob is shared
    among them by a watershed of that distance. Only blobs larger than any annotated
    object of their label are cut, so a reading chosen without cuts (white cells, whose
    smooth training-image blobs asked for a split depth that over-split new ones) still
    parts two touching cells the network merged: on the demo's test images a merged pair
    of 1,655 and 846 px annotated areas seeded one interior blob of 1,927 px, above the
    largest annotated white cell (1,688 px), with a 2 px neck.
    """
    if split_area <= 0:
        return seeds
    areas = np.bincount(seeds.ravel())
    big = [k for k in np.flatnonzero(areas > split_area) if k > 0]
    if not big:
        return seeds
    seeds = seeds.copy()
    boxes = ndimage.find_objects(seeds)
    queue = [(int(k), boxes[k - 1]) for k in big]
    next_id = len(areas)
    while queue:
        k, box = queue.pop()
        blob = seeds[box] == k
        dist = ndimage.distance_transform_edt(np.pad(blob, 1))[1:-1, 1:-1]
        for depth in NECK_DEPTHS:
            peaks, n = ndimage.label(h_maxima(dist, depth) & blob, structure=_EIGHT)
            if n >= 2:
                break
        else:
            continue  # no neck: one cell, however large
        parts = watershed(-dist, peaks, mask=blob)
        window = seeds[box]  # a view: writes land in `seeds`
        for part in range(1, n + 1):
            inside = parts == part
            label = k if part == 1 else next_id
            if part > 1:
                window[inside] = label
                next_id += 1
            if inside.sum() > split_area:
                queue.append((label, box))
    return seeds


def _per_label(value: float | Sequence[float], n_labels: int, name: str) -> np.ndarray:
    """A setting as an array indexed by label (index 0, background, unused)."""
    if np.ndim(value) == 0:
        return np.full(n_labels + 1, value)
    values = np.asarray(value)
    if values.shape != (n_labels,):
        raise ValueError(f"{name} needs one value per label ({n_labels}), got {len(values)}")
    return np.concatenate([[values[0]], values])


def semantic_map(inst: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """uint8 label map (0 background, l = label l) of an instance map."""
    return classes[inst].astype(np.uint8)


def _relabel(inst: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber instances 1..N in order, dropping ids with no pixels left."""
    present = np.flatnonzero(np.bincount(inst.ravel(), minlength=len(classes)))
    present = present[present > 0]
    lut = np.zeros(len(classes), np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[inst], np.concatenate([[0], classes[present]]).astype(np.int32)


def match_instances(
    pred: np.ndarray,
    pred_classes: np.ndarray,
    truth: np.ndarray,
    truth_classes: np.ndarray,
    n_labels: int,
    *,
    iou: float = 0.5,
) -> np.ndarray:
    """True positives per label (index 1..n_labels; index 0 unused): pairs of a predicted
    and a true instance of the same label overlapping with IoU > `iou`. At IoU > 0.5 a
    true instance can match at most one prediction, so no assignment step is needed."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in size")
    tp = np.zeros(n_labels + 1, np.int64)
    n_p, n_t = int(pred.max(initial=0)), int(truth.max(initial=0))
    if n_p == 0 or n_t == 0:
        return tp
    joint = np.bincount(
        truth.astype(np.int64).ravel() * (n_p + 1) + pred.ravel(), minlength=(n_t + 1) * (n_p + 1)
    ).reshape(n_t + 1, n_p + 1)
    area_t, area_p = joint.sum(axis=1), joint.sum(axis=0)
    inter = joint[1:, 1:]
    union = area_t[1:, None] + area_p[None, 1:] - inter
    hit = (inter > iou * union) & (truth_classes[1:, None] == pred_classes[None, 1:])
    ti, _ = np.nonzero(hit)
    np.add.at(tp, truth_classes[1:][ti], 1)
    return tp
