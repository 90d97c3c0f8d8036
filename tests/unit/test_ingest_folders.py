"""Class-folder ingest: flat and split layouts, detection, label maps, and refused folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format
from tests.factories import png
from tests.support import require_shared_data
from tests.unit.ingest_fixtures import NOTHING, active_shapes, item_meta, make_project, read_all
from tests.unit.ingest_fixtures import row_counts as counts

CLASSES = ["infected", "healthy"]


def _tree(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return root


def _labels(ctx) -> Counter:
    return Counter(s["label"] for s in active_shapes(ctx) if s["kind"] == "tag")


def test_flat_class_folders_become_one_tag_per_image(ctx, tmp_path):
    root = _tree(
        tmp_path / "cells",
        {
            "infected/a.png": png(seed=1),
            "infected/b.PNG": png(seed=2),
            "healthy/c.png": png(seed=3),
            "healthy/.DS_Store": "litter",
            "README.txt": "a note beside the class folders is allowed",
        },
    )
    assert detect_format(root) == "folders"
    project = make_project(ctx, "cells", "classification", CLASSES)
    report = ingest_path(ctx, project, root)
    assert report.format == "folders" and report.records == 3 and report.skipped == []
    assert _labels(ctx) == {"infected": 2, "healthy": 1}
    meta = item_meta(ctx)
    assert set(meta) == {"infected/a.png", "infected/b.PNG", "healthy/c.png"}
    assert all("split" not in m for m in meta.values())
    before = counts(ctx)
    assert ingest_path(ctx, project, root).annotations_new == 0  # idempotent
    assert counts(ctx) == before


def test_split_folders_pin_splits_and_label_map_renames_classes(ctx, tmp_path):
    root = _tree(
        tmp_path / "malaria",
        {
            "train/Parasitized/1.png": png(seed=1),
            "train/Uninfected/2.png": png(seed=2),
            "valid/Parasitized/3.png": png(seed=3),
            "test/Uninfected/4.png": png(seed=4),
        },
    )
    assert detect_format(root) == "folders"
    project = make_project(ctx, "malaria", "classification", CLASSES)
    with pytest.raises(InputError, match="label-map"):
        ingest_path(ctx, project, root)
    assert counts(ctx) == NOTHING
    label_map = {"Parasitized": "infected", "Uninfected": "healthy"}
    ingest_path(ctx, project, root, fmt="folders", label_map=label_map)
    assert _labels(ctx) == {"infected": 2, "healthy": 2}
    splits = {k: m.get("split") for k, m in item_meta(ctx).items()}
    assert splits == {
        "train/Parasitized/1.png": "train",
        "train/Uninfected/2.png": "train",
        "valid/Parasitized/3.png": "val",
        "test/Uninfected/4.png": "test",
    }


def test_detection_leaves_other_layouts_to_their_readers(tmp_path):
    loose = _tree(
        tmp_path / "loose", {"a/1.png": png(seed=1), "b/2.png": png(seed=2), "3.png": png(seed=3)}
    )
    assert detect_format(loose) == "images"  # loose images beside folders: a pool
    single = _tree(tmp_path / "single", {"slides/1.png": png(seed=1)})
    assert detect_format(single) == "images"  # one folder is not a choice of classes
    mixed = _tree(
        tmp_path / "mixed", {"a/1.png": png(seed=1), "b/2.png": png(seed=2), "b/x.csv": "1"}
    )
    # Not images only, so not class folders; and a CSV beside images is never silently
    # an unlabeled pool: the refusal names it.
    with pytest.raises(InputError, match=r"b/x\.csv"):
        detect_format(mixed)
    masks = _tree(tmp_path / "masks", {"images/1.png": png(seed=1), "masks/1.png": png(seed=2)})
    assert detect_format(masks) == "masks"


@pytest.mark.parametrize(
    ("files", "record", "reason", "kept"),
    [
        ({"healthy/": None}, "healthy", "holds no images", {"infected": 1}),
        ({"healthy/notes.txt": "x"}, "healthy/notes.txt", "is not an image", {"infected": 1}),
        (
            {"healthy/sub/2.png": png(seed=2)},
            "healthy/sub",
            "folder inside a class folder",
            {"infected": 1},
        ),
        (
            {"healthy/2.png": png(seed=2), "loose.png": png(seed=3)},
            "loose.png",
            "lies beside the class folders, in no class",
            {"infected": 1, "healthy": 1},
        ),
        # Folders are read in name order: the copy in healthy/ comes first.
        (
            {"healthy/copy.png": png(seed=1)},
            "infected/1.png",
            "also healthy/copy.png (class 'healthy')",
            {"healthy": 1},
        ),
    ],
)
def test_refused_folders_name_the_record_and_write_nothing(
    ctx, tmp_path, files, record, reason, kept
):
    root = _tree(tmp_path / "cells", {"infected/1.png": png(seed=1)})
    for rel, data in files.items():
        if data is None:
            (root / rel).mkdir(parents=True)
        else:
            _tree(root, {rel: data})
    project = make_project(ctx, "cells", "classification", CLASSES)
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, root, fmt="folders")
    assert err.value.record == record and reason in err.value.reason
    assert str(root) in (err.value.file or "")
    assert counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, fmt="folders", skip_invalid=True)
    assert [s.record for s in report.skipped] == [record]
    assert _labels(ctx) == kept


def _label_image(path: Path) -> None:
    from PIL import Image

    mask = np.zeros((48, 64), np.uint8)
    mask[5:20, 5:30] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def test_folders_auto_detection_never_takes_for_a_pool_what_holds_labels(tmp_path):
    """Class folders with one oddity (a nested folder, an empty class, a GIF) were read
    as an unlabeled image pool, and masks beside their images (ISBI's train/image +
    train/label) as two classes named after the folders: every label lost, exit 0."""
    two = {"cat/a.png": png(seed=1), "dog/b.png": png(seed=2)}
    for name, extra in [
        ("nested", {"dog/puppies/e.png": png(seed=3)}),
        ("gif", {"dog/c.gif": png(seed=3)}),
        ("split", {"train/cat/a.png": png(seed=1), "train/dog/b.png": png(seed=2)}),
    ]:
        files = extra if name == "split" else {**two, **extra}
        root = _tree(tmp_path / name, files)
        if name == "split":
            _tree(root, {"test/dog/sub/c.png": png(seed=4)})
        with pytest.raises(InputError, match=r"subfolders hold images .* --format folders"):
            detect_format(root)
    empty = _tree(tmp_path / "empty", two)
    (empty / "bird").mkdir()
    with pytest.raises(InputError, match=r"2 subfolders hold images \(cat/, dog/\)"):
        detect_format(empty)
    # Classes that number their images alike are still classes.
    alike = _tree(tmp_path / "alike", {"cat/1.png": png(seed=1), "dog/1.png": png(seed=2)})
    assert detect_format(alike) == "folders"
    # Masks beside their images: named like masks, their names pair with the images', and
    # they are label images of the same size (a few values; Carvana's come as GIF).
    for layout, suffix in [("images+annotations", "png"), ("train/image+train/label", "gif")]:
        imgs, masks = layout.split("+")
        root = _tree(tmp_path / layout.replace("/", "_"), {f"{imgs}/0.png": png(seed=1)})
        _label_image(root / masks / f"0.{suffix}")
        _tree(root, {"test/5.png": png(seed=5)})
        with pytest.raises(InputError, match=rf"{masks}/ holds files named like those in {imgs}"):
            detect_format(root)
    # Classes of photos named `mask` and `no_mask`, numbered alike, are still classes.
    masked = _tree(tmp_path / "masked", {"train/mask/0.png": png(1), "train/no_mask/0.png": png(2)})
    assert detect_format(masked) == "folders"
    # A point-count dataset's .mat files are annotations too, not nothing.
    mat = _tree(tmp_path / "mat", {"images/IMG_1.png": png(seed=1), "gt/GT_IMG_1.mat": "MATLAB"})
    with pytest.raises(InputError, match=r"gt/GT_IMG_1\.mat: binary \.mat data"):
        detect_format(mat)


def test_the_real_isbi_stack_is_not_taken_for_class_folders():
    root = require_shared_data("isbi2012-membrane")
    with pytest.raises(InputError, match=r"train/label/ holds files named like those in train/"):
        detect_format(root)
    assert detect_format(root / "train") == "masks"


def test_images_outside_any_class_in_a_split_folder_are_refused_not_dropped(ctx, tmp_path):
    """Kaggle's layout: train/<class>/ and an unlabeled test/ of loose images, which the
    reader passed over without a word."""
    root = _tree(
        tmp_path / "kaggle",
        {
            "train/infected/1.png": png(seed=1),
            "train/healthy/2.png": png(seed=2),
            "test/3.png": png(seed=3),
        },
    )
    project = make_project(ctx, "cells", "classification", CLASSES)
    with pytest.raises(InputError, match=r"3\.png lies in test/ outside any class") as err:
        ingest_path(ctx, project, root, fmt="folders")
    assert err.value.record == "test/3.png" and counts(ctx) == NOTHING
    assert "--format images --split test" in err.value.reason


def test_an_image_in_two_splits_is_refused(tmp_path):
    root = _tree(
        tmp_path / "leak",
        {"train/a/1.png": png(seed=1), "test/a/1.png": png(seed=1), "test/b/2.png": png(seed=2)},
    )
    records = read_all("folders", root)
    bad = [r for r in records if r.error is not None]
    assert [r.external_id for r in bad] == ["train/a/1.png"]
    assert "split 'test'" in bad[0].error.reason


def test_real_malaria_class_folders():
    root = require_shared_data("malaria-cells")
    assert detect_format(root) == "folders"
    records = read_all("folders", root)
    assert all(r.error is None for r in records)
    per = Counter((r.meta["split"], r.annotations[0].shapes[0].label) for r in records)
    assert per == {
        ("train", "Parasitized"): 1500,
        ("train", "Uninfected"): 1500,
        ("val", "Parasitized"): 500,
        ("val", "Uninfected"): 500,
    }
