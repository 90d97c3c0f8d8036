"""Export layouts as tools really write them, and folders no reader takes: an export is
read whole or refused naming its files, never silently taken for an unlabeled pool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from labelloop.db.models import SourceItem
from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format
from tests.factories import png
from tests.support import require_shared_data
from tests.unit.ingest_fixtures import NOTHING, active_shapes, item_meta, make_project, row_counts

LABELS = ["RBC", "WBC", "Platelets"]


def _coco(images: list[tuple[int, str]], boxes: list[tuple[int, int, str]]) -> dict:
    cats = [{"id": i, "name": n, "supercategory": "cells"} for i, n in enumerate(LABELS, 1)]
    ids = {n: i for i, n in enumerate(LABELS, 1)}
    return {
        "info": {"description": "Exported from roboflow.com"},
        "categories": cats,
        "images": [{"id": i, "file_name": f, "width": 64, "height": 48} for i, f in images],
        "annotations": [
            {
                "id": k,
                "image_id": img,
                "category_id": ids[label],
                "bbox": [4 + x, 4, 10, 8],
                "area": 80,
                "segmentation": [],
                "iscrowd": 0,
            }
            for k, (img, x, label) in enumerate(boxes)
        ],
    }


def _pool_with(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(seed=1))
    (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("train.json", b"", "empty file"),
        ("labels.json", '{"images": []}'.encode("utf-16"), "UTF-16"),
        (
            "coco.json",
            json.dumps([_coco([(1, "a.png")], [(1, 0, "RBC")])]).encode(),
            "COCO file wrapped in [...]",
        ),
        ("_classes.csv", b"filename,RBC,WBC\na.png,1,0\n", "text starting 'filename,RBC,WBC'"),
        ("meta.json", b'{"frames": {}}', "JSON object with keys frames"),
    ],
)
def test_unread_annotation_files_are_refused_not_an_image_pool(ctx, tmp_path, name, content, said):
    folder = _pool_with(tmp_path, name, content)
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, folder)
    msg = str(err.value)
    assert name in msg and said in msg
    assert "tried labelstudio, cvat, coco" in msg and "--format images" in msg
    assert row_counts(ctx) == NOTHING
    # stating the intent ingests the images alone
    report = ingest_path(ctx, project, folder, fmt="images")
    assert (report.format, report.images_new, report.unlabeled) == ("images", 1, 1)


def test_readme_files_do_not_block_an_image_pool(ctx, tmp_path):
    folder = _pool_with(tmp_path, "README.roboflow.txt", b"exported from roboflow")
    assert detect_format(folder) == "images"


def test_labelme_folder_with_a_stray_empty_list_is_labelme(ctx, tmp_path):
    folder = tmp_path / "labelme"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(seed=1))
    shape = {"label": "RBC", "points": [[2, 2], [20, 12]], "shape_type": "rectangle"}
    doc = {"version": "5.4.1", "flags": {}, "shapes": [shape], "imagePath": "a.png"}
    (folder / "a.json").write_text(json.dumps(doc))
    (folder / "stray.json").write_text("[]")
    assert detect_format(folder) == "labelme"
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match=r"stray\.json"):
        ingest_path(ctx, project, folder)
    report = ingest_path(ctx, project, folder, skip_invalid=True)
    assert report.annotations_new == 1 and [s.file for s in report.skipped] == [
        str(folder / "stray.json")
    ]


def test_cvat_task_export_under_another_name(ctx, tmp_path):
    src = require_shared_data("exports", "cvat", "docs-example-cvat-images-1.1", "annotations.xml")
    export = tmp_path / "task"
    (export / "images").mkdir(parents=True)
    shutil.copy(src, export / "train.xml")
    from PIL import Image

    Image.new("RGB", (1600, 1200)).save(export / "images" / "filename000.jpg")
    assert detect_format(export) == "cvat"


def test_roboflow_coco_download_pins_its_splits(ctx, tmp_path):
    root = tmp_path / "BCCD.v3i.coco"
    layout = {"train": ["a.png", "b.png"], "valid": ["c.png"], "test": ["d.png"]}
    for seed, (sub, names) in enumerate(layout.items()):
        (root / sub).mkdir(parents=True)
        for k, n in enumerate(names):
            (root / sub / n).write_bytes(png(seed=10 * seed + k))
        doc = _coco(list(enumerate(names)), [(i, 0, "RBC") for i in range(len(names))])
        (root / sub / "_annotations.coco.json").write_text(json.dumps(doc))
    (root / "README.roboflow.txt").write_text("exported from roboflow")
    assert detect_format(root) == "coco"
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert (report.records, report.images_new, report.annotations_new) == (4, 4, 4)
    splits = {k: m["split"] for k, m in item_meta(ctx).items()}
    assert splits == {"train/0": "train", "train/1": "train", "valid/0": "val", "test/0": "test"}


def test_coco_subset_is_the_image_folder_the_name_ends_with(ctx, tmp_path):
    root = tmp_path / "coco"
    (root / "images" / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "train2017" / "a.png").write_bytes(png(seed=1))
    (root / "annotations" / "stuff_train2017.json").write_text(
        json.dumps(_coco([(7, "a.png")], [(7, 0, "WBC")]))
    )
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert (report.images_new, report.annotations_new) == (1, 1)
    assert list(item_meta(ctx)) == ["train2017/7"]


def test_roboflow_voc_download_of_bccd(ctx, tmp_path):
    bccd = require_shared_data("bccd", "BCCD")
    root = tmp_path / "BCCD.v3i.voc"
    picks = {"train": ["BloodImage_00000", "BloodImage_00001"], "valid": ["BloodImage_00002"]}
    for sub, ids in picks.items():
        (root / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(bccd / "Annotations" / f"{i}.xml", root / sub / f"{i}.xml")
            shutil.copy(bccd / "JPEGImages" / f"{i}.jpg", root / sub / f"{i}.jpg")
    assert detect_format(root) == "voc"
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert (report.records, report.images_new, report.annotations_new) == (3, 3, 3)
    assert sum(report.shapes_per_class.values()) == len(active_shapes(ctx)) > 30
    splits = {k: m.get("split") for k, m in item_meta(ctx).items()}
    assert splits == {
        "train/BloodImage_00000": "train",
        "train/BloodImage_00001": "train",
        "valid/BloodImage_00002": "val",
    }


def test_ultralytics_images_and_annotations_folders(ctx, tmp_path):
    root = tmp_path / "yolo"
    (root / "Images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Images" / "a.png").write_bytes(png(seed=1))
    (root / "Annotations" / "a.txt").write_text("1 0.5 0.5 0.25 0.25\n0 0.2 0.2 0.1 0.1\n")
    (root / "classes.txt").write_text("RBC\nWBC\nPlatelets\n")
    assert detect_format(root) == "yolo"
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"WBC": 1, "RBC": 1}


def test_yolo_obb_label_txt_rotated_boxes_become_polygons(ctx, tmp_path):
    root = tmp_path / "cells.v1i.yolov5-obb"
    for sub in ("train", "valid"):
        (root / sub / "images").mkdir(parents=True)
        (root / sub / "labelTxt").mkdir()
    (root / "data.yaml").write_text("names: [RBC, WBC, Platelets]\nnc: 3\n")
    (root / "train" / "images" / "a.png").write_bytes(png(seed=1))
    (root / "train" / "labelTxt" / "a.txt").write_text(
        "imagesource:roboflow\ngsd:null\n10 2 30 12 25 22 5 12 RBC 0\n40 5 50 5 50 15 40 15 WBC 1\n"
    )
    (root / "valid" / "images" / "b.png").write_bytes(png(seed=2))
    (root / "valid" / "labelTxt" / "b.txt").write_text("")
    assert detect_format(root) == "yolo-obb"
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_kind == {"polygon": 2}
    rotated = next(s for s in active_shapes(ctx) if s["label"] == "RBC")
    assert rotated["points"] == [[10, 2], [30, 12], [25, 22], [5, 12]]
    assert {k: m.get("split") for k, m in item_meta(ctx).items()} == {
        "train/a": "train",
        "valid/b": "val",
    }
    assert rotated["attributes"] == {} and active_shapes(ctx)[1]["attributes"] == {
        "difficult": True
    }
    # A difficulty other than 0 or 1 was read as not difficult: refused, naming the line.
    label = root / "train" / "labelTxt" / "a.txt"
    label.write_text(label.read_text().replace("WBC 1", "WBC 2"))
    with pytest.raises(InputError, match="difficult '2' is not 0 or 1") as err:
        ingest_path(ctx, project, root)
    assert err.value.record == "image train/a / line 4"


def test_roboflow_createml_download(ctx, tmp_path):
    root = tmp_path / "cells.v1i.createml"
    for sub, seed in (("train", 1), ("test", 2)):
        (root / sub).mkdir(parents=True)
        (root / sub / f"{sub}.png").write_bytes(png(seed=seed))
        doc = [
            {
                "image": f"{sub}.png",
                "annotations": [
                    {"label": "RBC", "coordinates": {"x": 20, "y": 10, "width": 8, "height": 6}}
                ],
            }
        ]
        (root / sub / "_annotations.createml.json").write_text(json.dumps(doc))
    assert detect_format(root) == "createml"
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert (report.images_new, report.annotations_new) == (2, 2)
    box = active_shapes(ctx)[0]
    assert (box["x"], box["y"], box["w"], box["h"]) == (16, 7, 8, 6)
    assert {k: m.get("split") for k, m in item_meta(ctx).items()} == {
        "train/train.png": "train",
        "test/test.png": "test",
    }


def test_labelme2voc_segmentation_class_png(ctx, tmp_path):
    """labelme2voc.py writes .npy into SegmentationClass/ and the PNGs beside it."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "voc-from-labelme"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassPNG"):
        (root / d).mkdir(parents=True)
    (root / "JPEGImages" / "a.jpg").write_bytes(png(seed=1))
    lbl = np.zeros((48, 64), dtype=np.uint8)
    lbl[5:15, 5:15] = 1
    lbl[20:30, 30:50] = 2
    lbl[0:2, 0:2] = 255  # __ignore__ (-1) saved as uint8
    np.save(root / "SegmentationClass" / "a.npy", lbl)
    mask = Image.frombytes("P", (64, 48), lbl.tobytes())  # as labelme's lblsave writes it
    mask.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    mask.save(root / "SegmentationClassPNG" / "a.png")
    (root / "class_names.txt").write_text("_background_\nRBC\nWBC")
    assert detect_format(root) == "masks"
    project = make_project(ctx, "cells", "segmentation", LABELS)
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"RBC": 1, "WBC": 1}


def test_duplicate_task_ids_in_one_label_studio_export_are_refused(ctx, tmp_path):
    from tests.factories import rect, task, write_export

    images = {"images/a.png": png(seed=1), "images/b.png": png(seed=2)}
    tasks = [
        task(1, "images/a.png", [[rect("RBC", 1, 1, 5, 5)]]),
        task(1, "images/b.png", [[rect("WBC", 1, 1, 5, 5)]]),
    ]
    export = write_export(tmp_path, tasks, images)
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match=r"id '1' appears twice in this file \(first as task 1\)"):
        ingest_path(ctx, project, export)
    assert row_counts(ctx) == NOTHING


def test_duplicate_image_ids_in_one_cvat_xml_are_refused(ctx, tmp_path):
    from PIL import Image

    export = tmp_path / "cvat"
    (export / "images").mkdir(parents=True)
    for n in ("a.png", "b.png"):
        Image.new("RGB", (64, 48)).save(export / "images" / n)
    box = '<box label="RBC" xtl="1" ytl="1" xbr="9" ybr="9" occluded="0" z_order="0"/>'
    (export / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version>'
        f'<image id="0" name="a.png" width="64" height="48">{box}</image>'
        f'<image id="0" name="b.png" width="64" height="48">{box}</image></annotations>'
    )
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match="id '0' appears twice"):
        ingest_path(ctx, project, export)
    assert row_counts(ctx) == NOTHING


def _frozen_shapes(ctx, project: str) -> dict[str, int]:
    from labelloop.datasets.freeze import freeze

    stats = freeze(ctx, project).stats
    out: dict[str, int] = {}
    for per in stats["shapes"].values():
        for label, n in per.items():
            out[label] = out.get(label, 0) + n
    return out


def test_coco_instances_and_keypoints_of_one_image_are_merged(ctx, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "val2017").mkdir(parents=True)
    (root / "images" / "val2017" / "a.png").write_bytes(png(seed=1))
    inst = _coco([(1, "a.png")], [(1, 0, "RBC"), (1, 20, "WBC")])
    kp = _coco([(1, "a.png")], [])
    kp["categories"] = [{"id": 1, "name": "WBC", "keypoints": ["nucleus"], "skeleton": []}]
    kp["annotations"] = [
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [30, 4, 10, 8], "area": 80,
         "iscrowd": 0, "keypoints": [35, 8, 2], "num_keypoints": 1}
    ]  # fmt: skip
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(inst))
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(kp))
    project = make_project(ctx, "cells", "detection", [*LABELS, "nucleus"])
    report = ingest_path(ctx, project, root)
    assert report.annotations_new == 2
    frozen = _frozen_shapes(ctx, project)
    # both files' shapes reach the dataset: 2 boxes + the keypoint file's box and point
    assert sum(frozen.values()) == sum(report.shapes_per_class.values())
    assert frozen["RBC"] == 1 and frozen["WBC"] == 2


def test_same_pixels_under_two_names_keep_both_files_boxes(ctx, tmp_path):
    from labelloop.reports import project_status

    root = tmp_path / "labelme"
    root.mkdir()
    for name, label, x in (("a", "RBC", 2), ("a_copy", "WBC", 30)):
        (root / f"{name}.png").write_bytes(png(seed=1))  # the same pixels twice
        shapes = [{"label": label, "points": [[x, 2], [x + 10, 12]], "shape_type": "rectangle"}]
        doc = {"shapes": shapes, "imagePath": f"{name}.png", "flags": {}}
        (root / f"{name}.json").write_text(json.dumps(doc))
    project = make_project(ctx, "cells", "detection", LABELS)
    report = ingest_path(ctx, project, root)
    assert report.duplicate_images == 1 and "same pixels as" in report.warnings[0]
    status = project_status(ctx, project)
    assert status["images"] == {"total": 1, "labelled": 1, "unlabeled": 0}
    assert status["annotations_per_class"] == {"RBC": 1, "WBC": 1}
    assert _frozen_shapes(ctx, project) == {"RBC": 1, "WBC": 1}
    # the same export again (e.g. as a zip, another source) adds no shape twice
    ingest_path(ctx, project, root, source="labelme:again")
    assert _frozen_shapes(ctx, project) == {"RBC": 1, "WBC": 1}


def test_mit_labelme_xml_polygons_are_read_not_a_missing_bndbox(ctx, tmp_path):
    root = tmp_path / "labelme-xml"
    (root / "Annotations" / "smear").mkdir(parents=True)
    (root / "Images" / "smear").mkdir(parents=True)
    (root / "Images" / "smear" / "a.jpg").write_bytes(png(seed=1))
    pts = "".join(f"<pt><x>{x}</x><y>{y}</y></pt>" for x, y in ((5, 5), (20, 5), (20, 15)))
    obj = "<object><name>{}</name><deleted>{}</deleted><polygon><username>u</username>{}</polygon></object>"  # noqa: E501
    (root / "Annotations" / "smear" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><folder>smear</folder>"
        "<source><sourceImage>The MIT-CSAIL database of objects and scenes</sourceImage></source>"
        + obj.format("RBC", 0, pts)
        + obj.format("WBC", 1, pts)
        + "<imagesize><nrows>48</nrows><ncols>64</ncols></imagesize></annotation>"
    )
    project = make_project(ctx, "cells", "segmentation", LABELS)
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_kind == {"polygon": 1} and report.shapes_per_class == {"RBC": 1}


@pytest.mark.parametrize(
    ("first", "said"),
    [
        ({"image_id": 1, "id": 1, "caption": "two red cells"}, "COCO captions file"),
        ({"image_id": 1, "file_name": "a.png", "segments_info": []}, "COCO panoptic file"),
    ],
)
def test_coco_captions_and_panoptic_say_what_they_are(ctx, tmp_path, first, said):
    root = tmp_path / "coco"
    root.mkdir()
    (root / "a.png").write_bytes(png(seed=1))
    doc = _coco([(1, "a.png")], [])
    doc["annotations"] = [first]
    (root / "captions_train.json").write_text(json.dumps(doc))
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match=said):
        ingest_path(ctx, project, root)


def test_coco_damage_is_named_in_its_own_section(ctx, tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    (root / "a.png").write_bytes(png(seed=1))
    text = json.dumps(_coco([(1, "a.png")], [(1, 0, "RBC")]))
    (root / "instances_x.json").write_text(text[: text.index('"bbox"') + 9])  # cut in annotations
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match="invalid or truncated JSON in 'annotations'"):
        ingest_path(ctx, project, root, fmt="coco")


def test_labelme_flags_named_like_classes_become_class_tags(ctx, tmp_path):
    root = tmp_path / "labelme"
    root.mkdir()
    for name, flag in (("a", "Parasitized"), ("b", "Uninfected")):
        (root / f"{name}.png").write_bytes(png(seed=ord(name)))
        doc = {"shapes": [], "imagePath": f"{name}.png", "flags": {flag: True, "blurry": False}}
        (root / f"{name}.json").write_text(json.dumps(doc))
    project = make_project(ctx, "malaria", "classification", ["Parasitized", "Uninfected"])
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"Parasitized": 1, "Uninfected": 1}
    assert report.shapes_per_kind == {"tag": 2}


def test_a_json_object_is_not_reported_as_a_task_without_image(ctx, tmp_path):
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"tasks": [{"id": 1}], "version": 2}))
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match="a JSON object with keys tasks, version"):
        ingest_path(ctx, project, export, fmt="labelstudio")


def test_a_single_label_studio_task_object_is_not_coco(ctx, tmp_path):
    from tests.factories import rect, task

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(seed=1))
    one = task(1, "images/a.png", [[rect("RBC", 1, 1, 5, 5)]])
    one = {"id": one["id"], "annotations": one["annotations"], "data": one["data"]}
    (tmp_path / "task.json").write_text(json.dumps(one))
    assert detect_format(tmp_path / "task.json") == "labelstudio"


def test_yolo_negative_width_is_named_as_such(ctx, tmp_path):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "a.png").write_bytes(png(seed=1))
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 -0.2 0.1\n")
    project = make_project(ctx, "cells", "detection", ["0"])
    with pytest.raises(InputError, match=r"negative size \(w -0.2"):
        ingest_path(ctx, project, root)


def test_a_symlink_leaving_the_export_is_refused_by_name(ctx, tmp_path):
    root = tmp_path / "voc"
    root.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(seed=3))
    (root / "a.png").symlink_to(secret)
    (root / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>RBC</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    project = make_project(ctx, "cells", "detection", LABELS)
    with pytest.raises(InputError, match="outside the dataset folder: refused"):
        ingest_path(ctx, project, root)


def test_images_no_annotation_file_claims_are_unlabeled_images_not_dropped(ctx, tmp_path):
    """LabelMe and labelImg save a file only for an image someone drew on, and a CreateML
    file may list fewer images than its folder holds: the others were passed over
    without a word. They are the dataset's unlabeled images, as VOC's JPEGImages/ are."""
    from tests.unit.test_ingest_labelme import labelme, shape
    from tests.unit.test_ingest_voc import voc_xml

    box = shape("RBC", "rectangle", [[2, 2], [20, 20]])
    lm = tmp_path / "labelme"
    lm.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.PNG", "d.png"]):
        (lm / name).write_bytes(png(seed=i))
    (lm / "a.json").write_text(json.dumps(labelme("a.png", [box])))
    (lm / "b.JSON").write_text(json.dumps(labelme("b.png", [box])))  # any case of .json
    voc = tmp_path / "labelimg"
    voc.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        (voc / name).write_bytes(png(seed=10 + i))
    (voc / "a.xml").write_text(voc_xml("a.png", [("RBC", 2, 3, 20, 30)]))
    cml = tmp_path / "createml"
    cml.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        (cml / name).write_bytes(png(seed=20 + i))
    listed = [{"image": "a.png", "annotations": []}]
    (cml / "_annotations.createml.json").write_text(json.dumps(listed))
    # A CreateML file in a folder that is not a split is not read with this one: said.
    (cml / "extra").mkdir()
    (cml / "extra" / "_annotations.createml.json").write_text(json.dumps(listed))
    project = make_project(ctx, "extra", "detection", ["RBC"])
    with pytest.raises(InputError, match=r"not splits .*: extra/_annotations\.createml\.json"):
        ingest_path(ctx, project, cml)
    shutil.rmtree(cml / "extra")
    expected = {
        "labelme": ({"a", "b"}, {"c", "d"}),
        "voc": ({"a"}, {"b"}),
        "createml": ({"a.png"}, {"b.png"}),
    }
    for folder, fmt in [(lm, "labelme"), (voc, "voc"), (cml, "createml")]:
        assert detect_format(folder) == fmt
        project = make_project(ctx, fmt, "detection", ["RBC"])
        report = ingest_path(ctx, project, folder)
        labelled, unlabeled = expected[fmt]
        assert report.records == len(labelled) + len(unlabeled) and report.skipped == []
        with ctx.db.session() as s:
            rows = s.execute(select(SourceItem.external_id, SourceItem.source)).all()
        ids = {ext for ext, src in rows if src.startswith(fmt)}
        assert ids == labelled | unlabeled, fmt
        assert report.unlabeled == len(unlabeled), fmt
    # Two files in one folder: an image one lists is not unlabeled for the other.
    (cml / "more.createml.json").write_text(json.dumps([{"image": "c.png", "annotations": []}]))
    (cml / "c.png").write_bytes(png(seed=30))
    project = make_project(ctx, "two-files", "detection", ["RBC"])
    report = ingest_path(ctx, project, cml)
    assert (report.records, report.unlabeled, report.duplicate_images) == (3, 1, 0)
