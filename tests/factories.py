"""Small factories for real files: PNG images and Label Studio exports as the tool writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from labelloop.imaging import encode_png


def png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def rect(
    label: str,
    x: float,
    y: float,
    w: float,
    h: float,
    *,
    width: int = 64,
    height: int = 48,
    rid: str = "r1",
    from_name: str = "box",
) -> dict:
    """A rectanglelabels result in percent, as Label Studio exports it."""
    return {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": from_name,
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def poly(
    label: str, points: list[list[float]], *, width: int = 64, height: int = 48, rid: str = "p1"
) -> dict:
    return {
        "id": rid,
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"points": points, "polygonlabels": [label], "closed": True},
    }


def choice(label: str, *, rid: str = "c1") -> dict:
    """A choices result (an image-level class), as Label Studio exports it."""
    return {
        "id": rid,
        "type": "choices",
        "from_name": "class",
        "to_name": "image",
        "value": {"choices": [label]},
    }


def task(
    task_id: int,
    image: str,
    results: list[list[dict]] | None = None,
    *,
    project: int = 7,
    cancelled: bool = False,
) -> dict:
    anns = [
        {
            "id": task_id * 100 + i,
            "completed_by": 1,
            "result": r,
            "was_cancelled": cancelled,
            "ground_truth": False,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": f"2026-01-0{i + 1}T00:00:00Z",
            "lead_time": 3.2,
            "task": task_id,
        }
        for i, r in enumerate(results or [])
    ]
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d={image}"},
        "annotations": anns,
        "predictions": [],
        "project": project,
        "meta": {},
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }


def write_export(folder: Path, tasks: list[dict], images: dict[str, bytes]) -> Path:
    for name, data in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    path = folder / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def small_export(folder: Path, n: int = 3, seed: int = 0) -> Path:
    """n annotated tasks (RBC + WBC boxes, a Platelets polygon) and their images; another
    `seed` gives other pixels."""
    images = {f"images/img{i}.png": png(seed=seed + i) for i in range(n)}
    tasks = [
        task(
            i + 1,
            f"images/img{i}.png",
            [
                [
                    rect("RBC", 10, 10, 20, 20, rid=f"a{i}"),
                    rect("WBC", 50, 40, 30, 30, rid=f"b{i}"),
                    poly("Platelets", [[70, 70], [80, 70], [80, 85]], rid=f"c{i}"),
                ]
            ],
        )
        for i in range(n)
    ]
    return write_export(folder, tasks, images)


def class_export(folder: Path, n: int = 6, labels: tuple[str, ...] = ("RBC", "WBC", "Platelets")):
    """n tasks, each with one image-level class (choices), cycling through `labels`."""
    images = {f"images/img{i}.png": png(seed=i) for i in range(n)}
    tasks = [
        task(i + 1, f"images/img{i}.png", [[choice(labels[i % len(labels)], rid=f"t{i}")]])
        for i in range(n)
    ]
    return write_export(folder, tasks, images)


TINY_RECIPE = {"epochs": 1, "batch_size": 2, "image_size": 64}


def trained_project(
    ctx,
    name: str,
    folder: Path,
    *,
    labelled: int = 6,
    pool: int = 6,
    pool_seed: int = 50,
    train: bool = True,
) -> tuple[int, int | None]:
    """A segmentation project with `labelled` annotated tasks and a `pool` of unlabelled
    images, frozen and (with `train`) trained with a tiny recipe: (dataset version id,
    model version id)."""
    from labelloop.datasets.freeze import freeze
    from labelloop.ingest import ingest_path
    from labelloop.projects import create_project
    from labelloop.runs import execute_run, request_run

    with ctx.db.session() as s:
        create_project(s, name, "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, name, small_export(folder / "src", n=labelled))
    images = folder / "pool"
    images.mkdir(parents=True)
    for i in range(pool):
        (images / f"u{i}.png").write_bytes(png(seed=pool_seed + i))
    ingest_path(ctx, name, images)
    if not train:
        return 0, None
    dv = freeze(ctx, name).dataset_version_id
    return dv, execute_run(ctx, request_run(ctx, dv, overrides=TINY_RECIPE).run_id)
