"""Real benchmark data as frozen manifests, read through labelloop's own readers.

Training code reads only a manifest and a `fetch(blob_key) -> bytes` callable, so the
benchmarks build both straight from `../shared/data` without a database: BCCD keeps its
published train/val/test split (ImageSets/Main), ISBI 2012 a fixed split of its 30
labelled images. Image bytes are held in memory (a few MB for either set).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from labelloop.domain import shapes_to_json
from labelloop.geometry import mask_shape
from labelloop.ingest.readers.folders import read_class_folders
from labelloop.ingest.readers.voc import read_voc
from labelloop.ingest.records import ReadOptions

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BCCD = SHARED / "bccd" / "BCCD"
ISBI = SHARED / "isbi2012-membrane"
BCCD_LABELS = ["RBC", "WBC", "Platelets"]

Fetch = Callable[[str], bytes]


def _require(path: Path) -> None:
    if not path.exists():
        raise SystemExit(
            f"benchmark data not found: {path} (expected ../shared/data beside the checkout)"
        )


def _item(blobs: dict[str, bytes], data: bytes, split: str, shapes: list, name: str) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    blobs[sha] = data
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return {
        "image_id": len(blobs),
        "sha256": sha,
        "blob_key": sha,
        "width": width,
        "height": height,
        "split": split,
        "group": name,
        "name": name,
        "shapes": shapes_to_json(shapes),
    }


def bccd_manifest(task: str = "detection") -> tuple[dict, Fetch]:
    """BCCD with its own split; boxes whose label is not RBC/WBC/Platelets or whose
    coordinates are invalid are dropped by the reader's validation (a handful)."""
    _require(BCCD)
    splits: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for line in (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            splits[line.strip()] = split
    blobs: dict[str, bytes] = {}
    items = []
    for rec in read_voc(BCCD, ReadOptions(source="bccd")):
        stem = Path(rec.uri).stem
        if rec.error is not None or stem not in splits:
            continue
        shapes = [sh for ann in rec.annotations for sh in ann.shapes if sh.label in BCCD_LABELS]
        items.append(_item(blobs, rec.load(), splits[stem], shapes, stem))
    items.sort(key=lambda it: it["name"])
    manifest = {
        "version": 1,
        "project": {"name": "bccd", "task": task},
        "labels": list(BCCD_LABELS),
        "split_seed": 0,
        "items": items,
    }
    return manifest, blobs.__getitem__


def _isbi_pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(ISBI / "train" / "image" / f"{i}.png").convert("L"))
    label = np.asarray(Image.open(ISBI / "train" / "label" / f"{i}.png").convert("L"))
    return image, label < 128


def membrane_offset(ids: Iterable[int]) -> tuple[float, float]:
    """Where ISBI's membrane masks sit relative to the dark membranes they trace, (dy, dx)
    in pixels (positive: the image's membranes lie below / right of the mask), from the
    given images only.

    For each image, the mean intensity under the mask shifted by -1, 0 and +1 pixel along
    each axis is fitted with a parabola; its vertex is where the mask is darkest, i.e.
    best aligned. The 30 labelled images agree to within a few tenths of a pixel."""
    dys, dxs = [], []
    for i in ids:
        image, mask = _isbi_pair(i)
        img = image.astype(np.float64)[8:-8, 8:-8]

        def mean_under(dy: int, dx: int, img=img, mask=mask) -> float:
            return float(img[np.roll(mask, (dy, dx), axis=(0, 1))[8:-8, 8:-8]].mean())

        for out, (a, b, c) in (
            (dys, (mean_under(-1, 0), mean_under(0, 0), mean_under(1, 0))),
            (dxs, (mean_under(0, -1), mean_under(0, 0), mean_under(0, 1))),
        ):
            out.append((a - c) / (2 * (a - 2 * b + c)))
    return float(np.median(dys)), float(np.median(dxs))


def shift_image(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Translate by (dy, dx) pixels with bilinear interpolation, borders reflected."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    h, w = image.shape[:2]
    return cv2.warpAffine(
        image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def isbi_manifest(
    test_ids: Sequence[int] = range(25, 30),
    val_ids: Sequence[int] = range(22, 25),
    shift: tuple[float, float] | None = None,
) -> tuple[dict, Fetch]:
    """ISBI 2012: label 0 (black) is membrane, the class learned here; images 25-29 are
    held out for test and 22-24 for validation by default, the rest train.

    `shift` (dy, dx) translates every image (test images too; masks untouched) by that
    many pixels before it enters the manifest: with -membrane_offset(train ids) the
    images' membranes sit where their masks are drawn (see `membrane_offset`)."""
    _require(ISBI)
    from labelloop.imaging import encode_png

    blobs: dict[str, bytes] = {}
    items = []
    for i in range(30):
        if shift is None:
            image = (ISBI / "train" / "image" / f"{i}.png").read_bytes()
            membrane = _isbi_pair(i)[1]
        else:
            gray, membrane = _isbi_pair(i)
            image = encode_png(np.repeat(shift_image(gray, *shift)[..., None], 3, axis=2))
        split = "test" if i in test_ids else "val" if i in val_ids else "train"
        items.append(_item(blobs, image, split, [mask_shape(membrane, "membrane")], f"isbi-{i}"))
    manifest = {
        "version": 1,
        "project": {"name": "isbi2012", "task": "segmentation"},
        "labels": ["membrane"],
        "split_seed": 0,
        "items": items,
    }
    return manifest, blobs.__getitem__


def synthetic_manifest(
    splits: dict[str, int] | None = None, size: int = 256, seed: int = 0, task: str = "segmentation"
) -> tuple[dict, Fetch]:
    """Synthetic blood smears (labelloop.synthetic) as a segmentation manifest (each cell's
    outline) or a detection one (each cell's box): for measurements that need identical
    data on every machine rather than real images."""
    from labelloop.imaging import encode_png
    from labelloop.synthetic import generate_smear, instance_shapes, smear_seed

    splits = splits or {"train": 16, "val": 4, "test": 4}
    blobs: dict[str, bytes] = {}
    items = []
    for split, n in splits.items():
        for _ in range(n):
            sample = generate_smear(smear_seed(seed, len(items)), size=size)
            shapes = [
                sh for sh in instance_shapes(sample) if (sh.kind == "box") == (task == "detection")
            ]
            items.append(_item(blobs, encode_png(sample.image), split, shapes, f"s{len(items)}"))
    manifest = {
        "version": 1,
        "project": {"name": "synthetic", "task": task},
        "labels": ["RBC", "WBC", "Platelets"],
        "split_seed": seed,
        "items": items,
    }
    return manifest, blobs.__getitem__


MALARIA = SHARED / "malaria-cells"
MALARIA_LABELS = ["Parasitized", "Uninfected"]


def malaria_manifest(val_fraction: float = 0.1) -> tuple[dict, Fetch]:
    """The NIH thin-smear crops, read by the class-folder reader, as a whole-image
    classification manifest.

    The set ships `train/` and `val/` class folders; the benchmark needs a test part no
    training decision saw, so `val/` (1,000 crops) becomes the test split and
    `val_fraction` of `train/` (chosen by a hash of the file name) the validation split
    that picks the best epoch."""
    _require(MALARIA)
    blobs: dict[str, bytes] = {}
    items = []
    for rec in read_class_folders(MALARIA, ReadOptions(source="malaria")):
        if rec.error is not None:
            raise SystemExit(str(rec.error))
        path = Path(rec.file)
        split = "test" if rec.meta["split"] == "val" else "train"
        if split == "train":
            h = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16)
            split = "val" if h / 0xFFFFFFFF < val_fraction else "train"
        shapes = rec.annotations[0].shapes
        items.append(_item(blobs, rec.load(), split, shapes, path.stem))
    manifest = {
        "version": 1,
        "project": {"name": "malaria-cells", "task": "classification"},
        "labels": list(MALARIA_LABELS),
        "split_seed": 0,
        "items": items,
    }
    return manifest, blobs.__getitem__
