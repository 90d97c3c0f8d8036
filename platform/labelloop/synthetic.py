"""Reproducible synthetic blood smears with exact instance truth.

Real smear datasets cannot ship with the project and their labels are noisy; these images
give every stage (ingest, training, scoring, oracle simulations) known answers. A seed
fixes every pixel and every annotation byte, so golden tests can compare files.

Cells are placed one by one; a later cell occludes earlier ones, and a placement is
rejected when it would hide most of an earlier cell or cut it in two, so every instance
stays a single, mostly visible region and no pixel belongs to two instances.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import contourpy
import numpy as np
from scipy import ndimage

from labelloop.domain import Box, Mask, Polygon, Shape, shapes_to_json
from labelloop.geometry import mask_shape
from labelloop.imaging import encode_png
from labelloop.labelstudio.convert import shapes_to_results
from labelloop.labelstudio.label_config import DEFAULT_CONTROLS, label_config_xml

LABELS = ("RBC", "WBC", "Platelets")
_BACKGROUND = np.array([234.0, 212.0, 216.0])
_RBC = np.array([212.0, 122.0, 132.0])
_CYTOPLASM = np.array([206.0, 190.0, 220.0])
_NUCLEUS = np.array([92.0, 42.0, 128.0])
_PLATELET = np.array([150.0, 92.0, 172.0])


@dataclass
class SmearSample:
    image: np.ndarray  # (H, W, 3) uint8
    instances: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (label, bool mask)


@dataclass(frozen=True)
class SyntheticSummary:
    out_dir: Path
    labeled_files: list[str]  # relative to out_dir
    pool_files: list[str]
    labeled_counts: dict[str, int]
    pool_counts: dict[str, int]


@dataclass
class _Cell:
    label: str
    sl: tuple[slice, slice]  # in-image bounding box of the full cell
    local: np.ndarray  # bool, full cell inside sl
    rho: np.ndarray  # normalised radius inside sl (0 centre, 1 edge) for shading
    nucleus: np.ndarray | None = None
    full_area: int = 0
    visible: int = 0


def generate_smear(seed: int, size: int = 256) -> SmearSample:
    """One smear image and its visible instance masks; same seed -> same pixels."""
    rng = np.random.default_rng(seed)
    s = size / 256.0
    n_rbc = int(rng.integers(8, 41))
    n_wbc = int(rng.integers(1, 3)) if rng.random() < 0.6 else 0
    n_plt = int(rng.integers(0, 7))
    clustering = rng.uniform(0.0, 0.7)
    plan = ["RBC"] * n_rbc + ["WBC"] * n_wbc
    rng.shuffle(plan)
    plan += ["Platelets"] * n_plt

    owner = np.full((size, size), -1, dtype=np.int16)
    cells: list[_Cell] = []
    centres: list[tuple[float, float, float]] = []
    for label in plan:
        for _ in range(25):
            cell, centre = _propose(label, rng, s, size, centres, clustering)
            if cell is not None and _accept(cell, centre, owner, cells):
                _commit(cell, owner, cells)
                centres.append(centre)
                break

    image = _background(rng, size)
    instances = []
    for k, cell in enumerate(cells):
        vis = owner[cell.sl] == k
        if not vis.any():
            continue
        _paint(image, cell, vis, rng)
        full = np.zeros((size, size), dtype=bool)
        full[cell.sl] = vis
        instances.append((cell.label, full))
    return SmearSample(image=_finish(image, rng), instances=instances)


def _propose(
    label: str,
    rng: np.random.Generator,
    s: float,
    size: int,
    centres: list[tuple[float, float, float]],
    clustering: float,
):
    if label == "RBC":
        r = rng.uniform(9, 14) * s
        ecc, wobble = rng.uniform(0.0, 0.12), 0.03
    elif label == "WBC":
        r = rng.uniform(18, 24) * s
        ecc, wobble = rng.uniform(0.0, 0.08), 0.07
    else:
        r = rng.uniform(2, 4) * s
        ecc, wobble = rng.uniform(0.0, 0.25), 0.12
    if label == "RBC" and centres and rng.random() < clustering:
        ox, oy, orad = centres[int(rng.integers(len(centres)))]
        d = (orad + r) * rng.uniform(0.8, 1.05)
        a = rng.uniform(0, 2 * np.pi)
        cx, cy = ox + d * np.cos(a), oy + d * np.sin(a)
    else:
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
    if not (0 <= cx < size and 0 <= cy < size):
        return None, (cx, cy, r)
    angle = rng.uniform(0, np.pi)
    harmonics = [(rng.uniform(0, wobble), k, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
    ext = r * (1 + ecc) * (1 + sum(h[0] for h in harmonics)) + 1
    y0, y1 = max(0, int(cy - ext)), min(size, int(cy + ext) + 2)
    x0, x1 = max(0, int(cx - ext)), min(size, int(cx + ext) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    c, si = np.cos(angle), np.sin(angle)
    u, v = (dx * c + dy * si) / (r * (1 + ecc)), (-dx * si + dy * c) / (r * (1 - ecc))
    theta = np.arctan2(v, u)
    edge = 1 + sum(a * np.cos(k * theta + p) for a, k, p in harmonics)
    rho = np.hypot(u, v) / edge
    local = rho <= 1.0
    cell = _Cell(label, (slice(y0, y1), slice(x0, x1)), local, rho, full_area=int(local.sum()))
    if cell.full_area < (6 if label == "Platelets" else 40) * s * s:
        return None, (cx, cy, r)
    if label == "WBC":
        nucleus = np.zeros_like(local)
        for _ in range(int(rng.integers(2, 5))):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45) * r
            lr = rng.uniform(0.3, 0.45) * r
            nucleus |= np.hypot(dx - d * np.cos(a), dy - d * np.sin(a)) <= lr
        cell.nucleus = nucleus & (rho <= 0.85)
    return cell, (cx, cy, r)


def _accept(
    cell: _Cell, centre: tuple[float, float, float], owner: np.ndarray, cells: list[_Cell]
) -> bool:
    """Keep earlier cells mostly visible and in one piece; platelets sit in the gaps."""
    cx, cy, _ = centre
    if owner[int(cy), int(cx)] >= 0:
        return False
    under = owner[cell.sl][cell.local]
    if cell.label == "Platelets":
        return bool((under < 0).mean() >= 0.6)
    for k, covered in zip(*np.unique(under[under >= 0], return_counts=True), strict=True):
        other = cells[k]
        if other.visible - covered < 0.55 * other.full_area:
            return False
        remaining = owner[other.sl] == k
        hidden = np.zeros_like(remaining)
        ys = slice(max(cell.sl[0].start, other.sl[0].start), min(cell.sl[0].stop, other.sl[0].stop))
        xs = slice(max(cell.sl[1].start, other.sl[1].start), min(cell.sl[1].stop, other.sl[1].stop))
        hidden[
            ys.start - other.sl[0].start : ys.stop - other.sl[0].start,
            xs.start - other.sl[1].start : xs.stop - other.sl[1].start,
        ] = cell.local[
            ys.start - cell.sl[0].start : ys.stop - cell.sl[0].start,
            xs.start - cell.sl[1].start : xs.stop - cell.sl[1].start,
        ]
        if ndimage.label(remaining & ~hidden)[1] != 1:
            return False
    return True


def _commit(cell: _Cell, owner: np.ndarray, cells: list[_Cell]) -> None:
    region = owner[cell.sl]
    under = region[cell.local]
    for k, covered in zip(*np.unique(under[under >= 0], return_counts=True), strict=True):
        cells[k].visible -= int(covered)
    region[cell.local] = len(cells)
    cell.visible = cell.full_area
    cells.append(cell)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pink plasma with low-frequency stain variation, as thick and thin smear areas look."""
    coarse = rng.normal(0, 1, (3, 6, 6))
    stain = np.stack([ndimage.zoom(c, size / 6, order=3)[:size, :size] for c in coarse], axis=-1)
    return _BACKGROUND + stain * np.array([5.0, 4.0, 4.0]) + rng.normal(0, 2, 3)


def _paint(image: np.ndarray, cell: _Cell, vis: np.ndarray, rng: np.random.Generator) -> None:
    region = image[cell.sl]
    rho = cell.rho[..., None]
    if cell.label == "RBC":
        base = _RBC + rng.normal(0, 6, 3)
        pallor = rng.uniform(0.5, 0.85) * np.clip((0.62 - rho) / 0.3, 0, 1)
        rim = 1 - 0.08 * np.clip((rho - 0.8) / 0.2, 0, 1)
        colour = (base + (_BACKGROUND - base) * pallor) * rim
    elif cell.label == "WBC":
        colour = _CYTOPLASM + rng.normal(0, 5, 3) + np.zeros_like(rho)
        grain = ndimage.gaussian_filter(rng.normal(0, 1, cell.rho.shape), 1.2)[..., None]
        nucleus = _NUCLEUS + rng.normal(0, 6, 3) + grain * 18
        colour = np.where(cell.nucleus[..., None], nucleus, colour)
    else:
        colour = _PLATELET + rng.normal(0, 8, 3) - 25 * (1 - rho) + np.zeros_like(rho)
    region[vis] = colour[vis]


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics and camera: blur, per-image colour cast and brightness, sensor noise."""
    sigma = rng.uniform(0.5, 1.1)
    image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    image = image * rng.normal(1.0, 0.025, 3) * rng.uniform(0.9, 1.06)
    image = image + rng.normal(0, rng.uniform(1.5, 4.0), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def mask_outline(mask: np.ndarray) -> list[tuple[float, float]]:
    """Outer boundary of a bool mask as a polygon in pixel coordinates (pixel edges).

    The 0.5 iso-line of the mask passes between pixel centres, so the polygon rasterises
    back close to the mask; for a mask with several parts the largest outline is kept.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1).astype(np.float64)
    lines = contourpy.contour_generator(z=crop, line_type=contourpy.LineType.Separate).lines(0.5)
    line = max(lines, key=len)
    if len(line) > 1 and np.array_equal(line[0], line[-1]):
        line = line[:-1]
    pts = line + np.array([x0 - 0.5, y0 - 0.5])  # undo padding, index -> pixel-centre coords
    keep = [
        i for i in range(len(pts)) if not _collinear(pts[i - 1], pts[i], pts[(i + 1) % len(pts)])
    ]
    return [(float(x), float(y)) for x, y in pts[keep]]


def _collinear(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    return abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])) < 1e-9


def instance_shapes(sample: SmearSample) -> list[Shape]:
    """What an annotator would draw: an outline per cell (brush for the irregular WBC,
    polygons otherwise) plus a box per cell for detection and counting."""
    shapes: list[Shape] = []
    for label, mask in sample.instances:
        region: Polygon | Mask = (
            mask_shape(mask, label)
            if label == "WBC"
            else Polygon(label=label, points=mask_outline(mask))
        )
        ys, xs = np.nonzero(mask)
        box = Box(
            label=label,
            x=float(xs.min()),
            y=float(ys.min()),
            w=float(xs.max() + 1 - xs.min()),
            h=float(ys.max() + 1 - ys.min()),
        )
        shapes += [region, box]
    return shapes


def smear_seed(seed: int, index: int) -> int:
    """Seed of image `index` in a dataset generated with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _task(index: int, rel: str, results: list[dict], rng: np.random.Generator) -> dict:
    """One task exactly as Label Studio exports it (JSON format, local-files storage)."""
    created = datetime(2025, 3, 3, 9, 0, tzinfo=UTC) + timedelta(minutes=3 * index)
    done = created + timedelta(seconds=float(rng.uniform(40, 600)))
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    tid = index + 1
    return {
        "id": tid,
        "annotations": [
            {
                "id": tid,
                "completed_by": 1,
                "result": results,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": stamp(done),
                "updated_at": stamp(done),
                "draft_created_at": stamp(done - timedelta(seconds=2)),
                "lead_time": round(float(rng.uniform(20, 240)), 3),
                "prediction": {},
                "result_count": len(results),
                "unique_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
                "import_id": None,
                "last_action": None,
                "bulk_created": False,
                "task": tid,
                "project": 1,
                "updated_by": 1,
                "parent_prediction": None,
                "parent_annotation": None,
                "last_created_by": None,
            }
        ],
        "drafts": [],
        "predictions": [],
        "data": {"image": f"/data/local-files/?d={rel}"},
        "meta": {},
        "created_at": stamp(created),
        "updated_at": stamp(done),
        "inner_id": tid,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": 1,
        "comment_authors": [],
    }


def generate_dataset(
    out_dir: Path, *, n_labeled: int, n_pool: int, seed: int = 0, size: int = 256
) -> SyntheticSummary:
    """Write labeled images + a Label Studio export, and an unlabeled pool with its truth."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "pool").mkdir(parents=True, exist_ok=True)
    meta_rng = np.random.default_rng([seed, 7])
    tasks, truth = [], {}
    labeled_files, pool_files = [], []
    counts = {"labeled": dict.fromkeys(LABELS, 0), "pool": dict.fromkeys(LABELS, 0)}
    for i in range(n_labeled + n_pool):
        sample = generate_smear(smear_seed(seed, i), size)
        part = "labeled" if i < n_labeled else "pool"
        rel = f"{'images' if part == 'labeled' else 'pool'}/smear_{i:04d}.png"
        (out_dir / rel).write_bytes(encode_png(sample.image))
        for label, _ in sample.instances:
            counts[part][label] += 1
        shapes = instance_shapes(sample)
        if part == "labeled":
            labeled_files.append(rel)
            results = shapes_to_results(shapes, size, size, controls=DEFAULT_CONTROLS)
            tasks.append(_task(i, rel, results, meta_rng))
        else:
            pool_files.append(rel)
            truth[Path(rel).name] = shapes_to_json(shapes)
    (out_dir / "export.json").write_text(json.dumps(tasks), encoding="utf-8")
    (out_dir / "pool_truth.json").write_text(json.dumps(truth), encoding="utf-8")
    config = label_config_xml(list(LABELS), ["box", "polygon", "mask"])
    (out_dir / "label_config.xml").write_text(config, encoding="utf-8")
    return SyntheticSummary(out_dir, labeled_files, pool_files, counts["labeled"], counts["pool"])
