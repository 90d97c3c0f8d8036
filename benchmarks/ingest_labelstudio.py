"""Label Studio JSON export: labelloop's streaming reader against label-studio-sdk's converter.

One generated export (100,000 tasks by default; each task one annotation with rectangles
and polygons, as a blood-smear project holds) is read by:
  labelloop_parse  iter_export_tasks + task_annotations + results_to_shapes (reader, no DB)
  labelloop_ingest `labelloop ingest` into SQLite in a temporary data dir (the whole stage)
  sdk_parse        label-studio-sdk Converter.iter_from_json_file (its ijson reading path)
  sdk_coco         label-studio-sdk Converter.convert_to_coco (its closest full conversion)
Each runs in its own subprocess, which reports its time and its peak RSS (VmHWM) next to
the RSS it had before the work began (interpreter + imports). Tasks reference a small set
of PNG files, so the numbers measure parsing and writing, not disk reads.

The DB ingest is calibrated on a small export first; when 100k tasks would take longer
than --db-budget-s, it runs on --db-fallback tasks instead and the result says so.

Usage: .venv/bin/python benchmarks/ingest_labelstudio.py [--tasks N] [--db-budget-s S]
Writes benchmarks/results/ingest_labelstudio.json and ingest_labelstudio.png."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "ingest_labelstudio"
SIZE = 256  # px; every task image is SIZE x SIZE
N_IMAGES = 16
BOXES, POLYGONS, POLY_POINTS = 12, 3, 16
LABELS = ["RBC", "WBC", "Platelets"]
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="box" toName="image">'
    + "".join(f'<Label value="{lab}"/>' for lab in LABELS)
    + '</RectangleLabels><PolygonLabels name="poly" toName="image">'
    + "".join(f'<Label value="{lab}"/>' for lab in LABELS)
    + "</PolygonLabels></View>"
)
METHODS = {
    "labelloop_parse": "labelloop reader\n(parse, no DB)",
    "labelloop_ingest": "labelloop ingest\n(SQLite)",
    "sdk_parse": "label-studio-sdk\niter_from_json_file",
    "sdk_coco": "label-studio-sdk\nconvert_to_coco",
}


# -- the export -----------------------------------------------------------------------


def _result(rng: random.Random, i: int, kind: str) -> dict:
    size = {"original_width": SIZE, "original_height": SIZE, "image_rotation": 0}
    label = rng.choice(LABELS)
    if kind == "box":
        w, h = rng.uniform(3, 9), rng.uniform(3, 9)
        value = {
            "x": rng.uniform(0, 100 - w),
            "y": rng.uniform(0, 100 - h),
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        }
        return {
            "id": f"b{i}",
            "type": "rectanglelabels",
            "from_name": "box",
            "to_name": "image",
            "origin": "manual",
            **size,
            "value": value,
        }
    cx, cy, r = rng.uniform(10, 90), rng.uniform(10, 90), rng.uniform(3, 8)
    pts = []
    for k in range(POLY_POINTS):
        angle = 6.283185307179586 * k / POLY_POINTS
        rr = r * rng.uniform(0.8, 1.0)
        pts.append([cx + rr * math.cos(angle), cy + rr * math.sin(angle)])
    value = {"points": pts, "closed": True, "polygonlabels": [label]}
    return {
        "id": f"p{i}",
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "origin": "manual",
        **size,
        "value": value,
    }


def _task(rng: random.Random, task_id: int) -> dict:
    results = [_result(rng, i, "box") for i in range(BOXES)]
    results += [_result(rng, BOXES + i, "poly") for i in range(POLYGONS)]
    stamp = f"2026-03-{1 + task_id % 28:02d}T{task_id % 24:02d}:{task_id % 60:02d}:07.123456Z"
    return {
        "id": task_id,
        "annotations": [
            {
                "id": task_id * 2,
                "completed_by": 1 + task_id % 5,
                "result": results,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": stamp,
                "updated_at": stamp,
                "draft_created_at": None,
                "lead_time": round(rng.uniform(20, 300), 3),
                "prediction": {},
                "result_count": len(results),
                "unique_id": f"{task_id:08x}-0000-4000-8000-000000000000",
                "import_id": None,
                "last_action": None,
                "bulk_created": False,
                "task": task_id,
                "project": 3,
                "updated_by": 1 + task_id % 5,
                "parent_prediction": None,
                "parent_annotation": None,
                "last_created_by": None,
            }
        ],
        "file_upload": None,
        "drafts": [],
        "predictions": [],
        "data": {"image": f"/data/local-files/?d=images/cell_{task_id % N_IMAGES:02d}.png"},
        "meta": {},
        "created_at": stamp,
        "updated_at": stamp,
        "inner_id": task_id,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 3,
        "updated_by": 1 + task_id % 5,
        "comment_authors": [],
    }


def generate(n: int) -> Path:
    """export-<n>.json under the cache (reused when present); images in CACHE/images."""
    CACHE.mkdir(parents=True, exist_ok=True)
    images = CACHE / "images"
    if not images.is_dir():
        import numpy as np

        from labelloop.imaging import encode_png

        images.mkdir()
        for k in range(N_IMAGES):
            rng = np.random.default_rng(k)
            img = np.full((SIZE, SIZE, 3), 225, np.uint8)
            img += rng.integers(0, 30, img.shape, dtype=np.uint8)
            (images / f"cell_{k:02d}.png").write_bytes(encode_png(img))
    path = CACHE / f"export-{n}.json"
    if path.is_file():
        return path
    rng = random.Random(0)
    part = path.with_suffix(".part")
    with open(part, "w") as f:
        f.write("[\n")
        for task_id in range(1, n + 1):
            f.write(json.dumps(_task(rng, task_id)))
            f.write(",\n" if task_id < n else "\n")
        f.write("]\n")
    part.replace(path)
    return path


# -- one measurement (runs in its own process) ----------------------------------------


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _labelloop_parse(export: Path, workdir: Path) -> int:
    from labelloop.labelstudio.convert import results_to_shapes
    from labelloop.labelstudio.export import iter_export_tasks, task_annotations

    n = 0
    for task in iter_export_tasks(export):
        for ann in task_annotations(task):
            results_to_shapes(ann.results, file=str(export), record=ann.record)
        n += 1
    return n


def _labelloop_setup() -> None:
    """The project (and the migrated SQLite file) exist before the clock starts."""
    from labelloop.cli.main import app

    app(
        ["project", "create", "bench", "--task", "detection", "--labels", ",".join(LABELS)],
        standalone_mode=False,
    )


def _labelloop_ingest(export: Path, workdir: Path) -> int:
    from labelloop.cli.main import app

    out = workdir / "report.json"
    real_stdout = sys.stdout
    with open(out, "w") as sys.stdout:
        app(
            [
                "ingest",
                str(export),
                "-p",
                "bench",
                "--json",
                "--format",
                "labelstudio",
                "--image-root",
                str(CACHE),
            ],
            standalone_mode=False,
        )
    sys.stdout = real_stdout
    report = json.loads(out.read_text())
    if report.get("skipped") or report.get("error"):
        raise SystemExit(f"ingest did not take every task: {str(report)[:500]}")
    return int(report["records"])


def _sdk_converter(workdir: Path):
    from label_studio_sdk.converter import Converter

    return Converter(CONFIG, project_dir=str(CACHE), download_resources=False)


def _sdk_parse(export: Path, workdir: Path) -> int:
    return sum(1 for _ in _sdk_converter(workdir).iter_from_json_file(str(export)))


def _sdk_coco(export: Path, workdir: Path) -> int:
    conv = _sdk_converter(workdir)
    conv.convert_to_coco(str(export), str(workdir / "coco"), is_dir=False)
    with open(workdir / "coco" / "result.json") as f:
        return len(json.load(f)["images"])


WORK = {
    "labelloop_parse": _labelloop_parse,
    "labelloop_ingest": _labelloop_ingest,
    "sdk_parse": _sdk_parse,
    "sdk_coco": _sdk_coco,
}


def measure_here(name: str, export: Path, workdir: Path, out: Path) -> None:
    # Imports happen before the clock starts; the baseline RSS shows what they cost.
    if name.startswith("labelloop"):
        import labelloop.cli.main
        import labelloop.labelstudio.convert
        import labelloop.labelstudio.export  # noqa: F401

        if name == "labelloop_ingest":
            _labelloop_setup()
    else:
        import label_studio_sdk.converter  # noqa: F401
    baseline = _status_mb("VmRSS")
    t0 = time.perf_counter()
    tasks = WORK[name](export, workdir)
    seconds = time.perf_counter() - t0
    out.write_text(
        json.dumps(
            {
                "name": name,
                "tasks": tasks,
                "seconds": round(seconds, 2),
                "tasks_per_s": round(tasks / seconds, 1),
                "baseline_mb": round(baseline, 1),
                "peak_mb": round(_status_mb("VmHWM"), 1),
            }
        )
    )


def measure(name: str, export: Path, timeout: float | None = None) -> dict | None:
    """Run one measurement in a fresh interpreter; None when it ran past `timeout`."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "LABELLOOP_DATA_DIR": str(work / "data"),
            "LOCAL_FILES_DOCUMENT_ROOT": str(CACHE),
            "LOCAL_FILES_SERVING_ENABLED": "true",
        }
        for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
            env.pop(var, None)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            name,
            "--export",
            str(export),
            "--workdir",
            str(work),
        ]
        print(f"  {name} on {export.name} ...", flush=True)
        try:
            subprocess.run(cmd, cwd=work, env=env, check=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {name}: over {timeout:.0f} s, stopped", flush=True)
            return None
        result = json.loads((work / "result.json").read_text())
    print(f"  {name}: {result}", flush=True)
    return result


# -- the run ---------------------------------------------------------------------------


def plot(results: list[dict], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        METHODS[r["name"]] + (f"\n({r['tasks'] // 1000}k tasks)" if r["tasks"] != n else "")
        for r in results
    ]
    colours = ["#1e88e5" if r["name"].startswith("labelloop") else "#8e8e8e" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in (
        (axes[0], "tasks_per_s", "throughput (tasks/s, higher is better)"),
        (axes[1], "peak_mb", "peak RSS (MB, lower is better)"),
    ):
        values = [r[key] for r in results]
        bars = ax.bar(range(len(values)), values, color=colours)
        if key == "peak_mb":
            ax.bar(
                range(len(values)),
                [r["baseline_mb"] for r in results],
                color="#00000022",
                label="before the work (interpreter + imports)",
            )
            ax.legend(fontsize=8, loc="upper left")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        f"Label Studio JSON export, {n:,} tasks ({BOXES} boxes + {POLYGONS} polygons each)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--db-budget-s", type=float, default=360)
    ap.add_argument("--db-fallback", type=int, default=20_000)
    ap.add_argument("--measure", choices=sorted(WORK))
    ap.add_argument("--export", type=Path)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if args.measure:
        measure_here(args.measure, args.export, args.workdir, args.workdir / "result.json")
        return

    t0 = time.monotonic()
    export = generate(args.tasks)
    print(
        f"export: {export} ({export.stat().st_size / 1e6:.0f} MB, {time.monotonic() - t0:.0f} s)",
        flush=True,
    )
    notes = []
    results = [measure("labelloop_parse", export)]

    calib_n = max(1000, min(args.tasks // 50, 5000))
    calib = measure("labelloop_ingest", generate(calib_n))
    assert calib is not None
    estimate = args.tasks / calib["tasks_per_s"]
    db_export = export
    if estimate > args.db_budget_s:
        db_export = generate(args.db_fallback)
        notes.append(
            f"labelloop_ingest ran on {args.db_fallback:,} tasks: a {calib_n:,}-task calibration "
            f"ran at {calib['tasks_per_s']:.0f} tasks/s, so {args.tasks:,} tasks would take about "
            f"{estimate:.0f} s (budget {args.db_budget_s:.0f} s)"
        )
    ingest = measure("labelloop_ingest", db_export)
    assert ingest is not None
    results.append(ingest)
    results.append(measure("sdk_parse", export))
    results.append(measure("sdk_coco", export))

    RESULTS.mkdir(exist_ok=True)
    doc = {
        "benchmark": "ingest_labelstudio",
        "tasks": args.tasks,
        "export_mb": round(export.stat().st_size / 1e6, 1),
        "shapes_per_task": {"boxes": BOXES, "polygons": POLYGONS, "polygon_points": POLY_POINTS},
        "images": f"{N_IMAGES} PNG files {SIZE}x{SIZE}, shared by all tasks",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
        "calibration": calib,
        "notes": notes,
    }
    (RESULTS / "ingest_labelstudio.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, args.tasks, RESULTS / "ingest_labelstudio.png")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
