"""Per-object mask folders (2018 Data Science Bowl layout and masks/<stem>_<k>.png): one
instance per file, touching and overlapping cells kept apart, broken files refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelloop.errors import InputError
from labelloop.geometry import decode_mask
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format
from labelloop.objects import object_counts
from tests.factories import png
from tests.unit.ingest_fixtures import NOTHING, active_shapes, make_project, row_counts

H, W = 48, 64  # png() images are 64 wide, 48 high


def _mask_png(box: tuple[int, int, int, int], size: tuple[int, int] = (H, W)) -> bytes:
    arr = np.zeros(size, np.uint8)
    y0, y1, x0, x1 = box
    arr[y0:y1, x0:x1] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _image_size() -> tuple[int, int]:
    with Image.open(io.BytesIO(png(seed=0))) as im:
        return im.size[1], im.size[0]


# Two cells that touch (shared edge at x = 20) and one that overlaps the second by 4 px.
CELLS = [(5, 15, 10, 20), (5, 15, 20, 30), (13, 20, 28, 38)]


def _dsb(root: Path, ids: list[str], masks: dict[str, list[bytes]]) -> Path:
    for i, key in enumerate(ids):
        (root / key / "images").mkdir(parents=True)
        (root / key / "masks").mkdir()
        (root / key / "images" / f"{key}.png").write_bytes(png(seed=i))
        for k, data in enumerate(masks.get(key, [])):
            (root / key / "masks" / f"m{k:02d}.png").write_bytes(data)
    return root


def _flat(root: Path, stems: list[str], masks: dict[str, list[bytes]]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        (root / "images" / f"{stem}.png").write_bytes(png(seed=i))
    for stem, files in masks.items():
        for k, data in enumerate(files, start=1):
            (root / "masks" / f"{stem}_{k}.png").write_bytes(data)
    return root


@pytest.fixture
def project(ctx):
    assert _image_size() == (H, W)
    return make_project(ctx, "nuclei", "segmentation", ["nucleus"])


@pytest.mark.parametrize("layout", ["dsb", "flat"])
def test_each_mask_file_is_one_cell_touching_and_overlapping_kept(ctx, project, tmp_path, layout):
    cells = [_mask_png(b) for b in CELLS]
    if layout == "dsb":
        root = _dsb(tmp_path / "stage1", ["a1", "b2"], {"a1": cells, "b2": cells[:1]})
    else:
        root = _flat(tmp_path / "flat", ["a1", "b2", "c3"], {"a1": cells, "b2": cells[:1]})
    assert detect_format(root) == "object-masks"
    report = ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert report.shapes_per_class == {"nucleus": 4}
    assert report.unlabeled == (1 if layout == "flat" else 0)
    assert len(report.warnings) == 1 and "overlaps mask" in report.warnings[0]
    assert "by 4 px" in report.warnings[0]
    shapes = active_shapes(ctx)
    areas = sorted(int(decode_mask(s["size"], s["counts"]).sum()) for s in shapes)
    assert areas == [70, 100, 100, 100]
    from labelloop.domain import shapes_from_json

    # Touching cells stay two objects for every count.
    counted = object_counts(shapes_from_json(shapes), ["nucleus"], ("mask",))
    assert counted == {"nucleus": 4}


def test_unknown_label_names_the_label_map_to_use(ctx, project, tmp_path):
    root = _flat(tmp_path / "flat", ["a1"], {"a1": [_mask_png(CELLS[0])]})
    with pytest.raises(InputError, match="'object'"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (_mask_png((0, 5, 0, 5), size=(H + 1, W)), r"is 64x49 but its image is 64x48"),
        (_mask_png((0, 0, 0, 0)), r"is empty"),
        (b"not a png", r"cannot be decoded"),
    ],
)
def test_a_broken_mask_names_file_and_reason_and_writes_nothing(
    ctx, project, tmp_path, broken, reason
):
    root = _dsb(
        tmp_path / "stage1",
        ["a1", "b2"],
        {"a1": [_mask_png(CELLS[0])], "b2": [_mask_png(CELLS[0]), broken]},
    )
    with pytest.raises(InputError, match=reason) as err:
        ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert err.value.file.endswith("b2/masks/m01.png") and err.value.record == "image b2"
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, label_map={"object": "nucleus"}, skip_invalid=True)
    assert report.images_new == 1 and report.shapes_per_class == {"nucleus": 1}
    assert [(Path(s.file).name, s.record) for s in report.skipped] == [("m01.png", "image b2")]


def test_masks_without_their_image_are_an_error(ctx, project, tmp_path):
    root = _flat(
        tmp_path / "flat", ["a1"], {"a1": [_mask_png(CELLS[0])], "zz": [_mask_png(CELLS[1])]}
    )
    with pytest.raises(InputError, match=r"mask\(s\) without their image \(zz_1.png\)") as err:
        ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert err.value.record == "image zz"
    assert row_counts(ctx) == NOTHING
    dsb = _dsb(tmp_path / "stage1", ["a1"], {"a1": [_mask_png(CELLS[0])]})
    (dsb / "a1" / "images" / "a1.png").unlink()
    with pytest.raises(InputError, match="without their image"):
        ingest_path(ctx, project, dsb, label_map={"object": "nucleus"})


def test_nothing_in_the_flat_layout_is_passed_over(ctx, project, tmp_path):
    """A mask saved as GIF, one in a subfolder, a NumPy array and an image of a type not
    read were each a cell, or an image, left out without a word."""
    root = _flat(tmp_path / "flat", ["a1"], {"a1": [_mask_png(CELLS[0])]})
    (root / "masks" / "a1_2.gif").write_bytes(_mask_png(CELLS[1]))
    (root / "masks" / "extra").mkdir()
    (root / "masks" / "extra" / "a1_3.png").write_bytes(_mask_png(CELLS[1]))
    (root / "masks" / "a1_4.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(InputError, match="is not an image") as err:
        ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert row_counts(ctx) == NOTHING and err.value.file == str(root / "masks" / "a1_2.gif")
    report = ingest_path(ctx, project, root, label_map={"object": "nucleus"}, skip_invalid=True)
    assert sorted((s.record, s.reason.split(" (")[0]) for s in report.skipped) == [
        ("file masks/a1_2.gif", "a1_2.gif is not an image"),
        ("file masks/a1_4.npy", "a1_4.npy is not an image"),
        ("file masks/extra", "extra/ is a folder inside masks/"),
    ]
    assert report.shapes_per_class == {"nucleus": 1}


def test_class_masks_named_like_their_images_stay_with_the_masks_reader(tmp_path):
    root = tmp_path / "classes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "a1.png").write_bytes(png(seed=0))
    (root / "masks" / "a1.png").write_bytes(_mask_png(CELLS[0]))
    assert detect_format(root) == "masks"


def test_an_image_folder_without_masks_joins_the_pool(ctx, project, tmp_path):
    root = _dsb(tmp_path / "stage1", ["a1", "b2"], {"a1": [_mask_png(CELLS[0])]})
    (root / "b2" / "masks").rmdir()  # no masks/ at all, not an empty one
    report = ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert report.images_new == 2 and report.unlabeled == 1
    assert report.shapes_per_class == {"nucleus": 1}


def _stray_folder(root: Path) -> tuple[str, str]:
    (root / "notes").mkdir()
    return "notes", r"notes/ holds no images/ or masks/"


def _second_image(root: Path) -> tuple[str, str]:
    (root / "b2" / "images" / "extra.png").write_bytes(png(seed=7))
    return "b2/images/extra.png", r"b2/images/ holds 2 images \(b2.png, extra.png\); expected one"


def _text_in_masks(root: Path) -> tuple[str, str]:
    (root / "b2" / "masks" / "notes.txt").write_text("drawn by A.")
    return "b2/masks/notes.txt", r"notes.txt is not an image"


def _link_out(root: Path) -> tuple[str, str]:
    outside = root.parent / "outside.png"
    outside.write_bytes(_mask_png(CELLS[1]))
    (root / "b2" / "masks" / "m09.png").symlink_to(outside)
    return "b2/masks/m09.png", r"m09.png is a symlink that points outside"


def _link_loop(root: Path) -> tuple[str, str]:
    loop = root / "b2" / "masks" / "loop.png"
    loop.symlink_to(loop)
    return "b2/masks/loop.png", r"loop.png is a symlink that leads nowhere"


@pytest.mark.parametrize(
    "make", [_stray_folder, _second_image, _text_in_masks, _link_out, _link_loop]
)
def test_nothing_in_a_sample_folder_is_passed_over(ctx, project, tmp_path, make):
    """Each file or folder that cannot be read as the sample's image or one of its masks
    refuses that record, naming it; --skip-invalid keeps the others."""
    root = _dsb(
        tmp_path / "stage1",
        ["a1", "b2"],
        {"a1": [_mask_png(CELLS[0])], "b2": [_mask_png(CELLS[1])]},
    )
    file, reason = make(root)
    with pytest.raises(InputError, match=reason) as err:
        ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert err.value.file.endswith(file)
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, label_map={"object": "nucleus"}, skip_invalid=True)
    kept = 2 if make is _stray_folder else 1  # a stray folder refuses itself, not b2
    assert report.images_new == kept and report.shapes_per_class == {"nucleus": kept}
    assert len(report.skipped) == 1


def test_a_mask_file_drawn_in_fragments_is_one_cell_everywhere(ctx, project, tmp_path):
    """Each file is one object: counts and instance maps read it whole, as the ingest
    report does (a class-region mask would be one object per part)."""
    from labelloop.domain import shapes_from_json
    from labelloop.training.segmentation.instances import rasterize_instances

    two_parts = np.maximum(
        np.frombuffer(Image.open(io.BytesIO(_mask_png(CELLS[0]))).tobytes(), np.uint8),
        np.frombuffer(Image.open(io.BytesIO(_mask_png((30, 40, 50, 60)))).tobytes(), np.uint8),
    ).reshape(H, W)
    buf = io.BytesIO()
    Image.fromarray(two_parts).save(buf, format="PNG")
    root = _dsb(tmp_path / "stage1", ["a1"], {"a1": [buf.getvalue(), _mask_png(CELLS[2])]})
    report = ingest_path(ctx, project, root, label_map={"object": "nucleus"})
    assert report.shapes_per_class == {"nucleus": 2}
    shapes = shapes_from_json(active_shapes(ctx))
    assert object_counts(shapes, ["nucleus"], ("mask",)) == {"nucleus": 2}
    inst, _ = rasterize_instances(shapes, ["nucleus"], H, W)
    assert int(inst.max()) == 2
    # The same pixels as a plain mask (no per-object file behind it) count per part.
    plain = [s.model_copy(update={"attributes": {}}) for s in shapes]
    assert object_counts(plain, ["nucleus"], ("mask",)) == {"nucleus": 3}
