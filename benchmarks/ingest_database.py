"""The ingest stage into a database: the code before and after a change, in one run.

Two exports are ingested, each measurement in its own interpreter:
  labelstudio  the generated Label Studio export of benchmarks/ingest_labelstudio.py
               (12 boxes + 3 polygons per task, 16 shared PNGs) into SQLite: the figure
               BENCHMARKS.md has carried as "328 tasks/s"
  coco         a generated COCO instances file: --images unique PNGs with --polygons
               polygons each (10,000 x 50 = 500,000 by default) into PostgreSQL
`--before REF` also runs each with the library as it was at git REF (extracted with `git
archive` into a temporary folder and put first on PYTHONPATH), so before and after are
measured on the same machine under the same load. Reported: records/s (wall), CPU seconds
of the ingesting process (the database server's own CPU is not in it), peak RSS (VmHWM).

Usage: .venv/bin/python benchmarks/ingest_database.py [--tasks N] [--images N]
         [--polygons N] [--before REF] [--repeat N] [--only labelstudio|coco]
Writes benchmarks/results/ingest_database.json and ingest_database.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "ingest_database"
LABELS = ["RBC", "WBC", "Platelets"]
SIDE = 64  # px, every COCO image
PG_ADMIN = os.environ.get(
    "LABELLOOP_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# -- the COCO export -------------------------------------------------------------------


def generate_coco(images: int, polygons: int) -> Path:
    """CACHE/coco-<images>x<polygons>/ with instances_bench.json and images/bench/."""
    folder = CACHE / f"coco-{images}x{polygons}"
    path = folder / "annotations" / "instances_bench.json"
    if path.is_file():
        return folder
    import numpy as np
    from PIL import Image

    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    img_dir = folder / "images" / "bench"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    entries, anns = [], []
    for i in range(images):
        pixels = np.full((SIDE, SIDE, 3), 220, np.uint8)
        pixels[0, :3] = (i % 256, (i // 256) % 256, i // 65536)  # unique content
        Image.fromarray(pixels).save(img_dir / f"{i:05d}.png")
        entries.append({"id": i, "file_name": f"{i:05d}.png", "width": SIDE, "height": SIDE})
        for _ in range(polygons):
            cx, cy, r = rng.uniform(8, 56), rng.uniform(8, 56), rng.uniform(3, 7)
            pts = []
            for k in range(8):
                angle = 6.283185307179586 * k / 8
                pts += [round(cx + r * np.cos(angle), 1), round(cy + r * np.sin(angle), 1)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": rng.randint(1, 3),
                    "segmentation": [pts],
                    "bbox": [round(cx - r, 1), round(cy - r, 1), round(2 * r, 1), round(2 * r, 1)],
                    "area": round(3.1 * r * r, 1),
                    "iscrowd": 0,
                }
            )
    doc = {
        "info": {"description": "labelloop ingest benchmark"},
        "categories": [{"id": k, "name": n} for k, n in enumerate(LABELS, 1)],
        "images": entries,
        "annotations": anns,
    }
    part = path.with_suffix(".part")
    part.write_text(json.dumps(doc))
    part.replace(path)
    return folder


# -- one measurement (its own interpreter) ---------------------------------------------


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_here(kind: str, export: Path, image_root: Path | None, out: Path) -> None:
    import labelloop
    from labelloop.context import Context
    from labelloop.db import migrate
    from labelloop.ingest import ingest_path
    from labelloop.projects import create_project

    ctx = Context()
    migrate.upgrade(ctx.settings.database_url)
    with ctx.db.session() as s:
        create_project(s, "bench", "detection" if kind == "labelstudio" else "segmentation", LABELS)
    baseline = _status_mb("VmRSS")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    report = ingest_path(
        ctx,
        "bench",
        export,
        fmt="labelstudio" if kind == "labelstudio" else "coco",
        image_root=image_root,
    )
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if report.skipped:
        raise SystemExit(f"ingest skipped records: {report.skipped[:3]}")
    shapes = sum(report.shapes_per_kind.values())
    out.write_text(
        json.dumps(
            {
                "records": report.records,
                "shapes": shapes,
                "seconds": round(seconds, 2),
                "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
                "records_per_s": round(report.records / seconds, 1),
                "baseline_mb": round(baseline, 1),
                "peak_mb": round(_status_mb("VmHWM"), 1),
                "library": str(Path(labelloop.__file__).parent),
            }
        )
    )
    ctx.close()


def _pg_database(name: str, drop: bool = False) -> str:
    from urllib.parse import urlparse

    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not drop:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{urlparse(PG_ADMIN).netloc}/{name}"


def measure(kind: str, code: str, export: Path, image_root: Path | None, lib: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-{code}-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "LABELLOOP_DATA_DIR": str(work / "data")}
        for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
            env.pop(var, None)
        db = None
        if kind == "coco":
            db = f"labelloop_bench_{os.getpid()}_{code}"
            env["LABELLOOP_DATABASE_URL"] = _pg_database(db)
        if lib is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(lib / "platform"), env.get("PYTHONPATH", "")])
            env["LABELLOOP_MIGRATIONS_DIR"] = str(lib / "migrations")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", kind]
        cmd += ["--export", str(export), "--out", str(work / "result.json")]
        if image_root is not None:
            cmd += ["--image-root", str(image_root)]
        print(f"  {kind} ({code}) ...", flush=True)
        try:
            subprocess.run(cmd, cwd=work, env=env, check=True)
            result = json.loads((work / "result.json").read_text())
        finally:
            if db:
                _pg_database(db, drop=True)
    result.update(kind=kind, code=code, database="postgresql" if db else "sqlite")
    if lib is not None:
        result["ref"] = lib.name  # the git ref the "before" library was extracted from
    print(f"  {result}", flush=True)
    return result


def _extract(ref: str, dest: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", ref, "platform", "migrations"], cwd=REPO, capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = [f"{r['kind']}\n{r['database']}\n{r['code']}" for r in results]
    colours = ["#8e8e8e" if r["code"] == "before" else "#1e88e5" for r in results]
    for ax, key, title in (
        (axes[0], "records_per_s", "records/s (higher is better)"),
        (axes[1], "peak_mb", "peak RSS, MB (lower is better)"),
    ):
        bars = ax.bar(range(len(results)), [r[key] for r in results], color=colours)
        ax.bar_label(bars, labels=[f"{r[key]:,.0f}" for r in results], fontsize=8)
        ax.set_xticks(range(len(results)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("labelloop ingest into a database: before / after", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--polygons", type=int, default=50)
    ap.add_argument("--before", help="git ref of the code to compare against")
    ap.add_argument("--only", choices=("labelstudio", "coco"))
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure before and after N times, alternating; each keeps its least CPU "
        "(a shared machine only ever adds time), all CPU seconds are listed",
    )
    ap.add_argument("--measure", choices=("labelstudio", "coco"))
    ap.add_argument("--export", type=Path)
    ap.add_argument("--image-root", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.measure:
        measure_here(args.measure, args.export, args.image_root, args.out)
        return

    sys.path.insert(0, str(HERE))
    import ingest_labelstudio

    runs = []
    if args.only in (None, "labelstudio"):
        runs.append(
            ("labelstudio", ingest_labelstudio.generate(args.tasks), ingest_labelstudio.CACHE)
        )
    if args.only in (None, "coco"):
        runs.append(("coco", generate_coco(args.images, args.polygons), None))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        old = _extract(args.before, Path(tmp) / args.before) if args.before else None
        for kind, export, root in runs:
            sides = [("before", old)] if old is not None else []
            tries: dict[str, list[dict]] = {}
            for _ in range(max(args.repeat, 1)):
                for code, lib in [*sides, ("after", None)]:
                    tries.setdefault(code, []).append(measure(kind, code, export, root, lib))
            for measured in tries.values():
                best = min(measured, key=lambda r: r["cpu_s"])
                results.append({**best, "cpu_s_all": [r["cpu_s"] for r in measured]})
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "ingest_database.json"
    if previous.is_file():  # keep the other export's rows from an earlier --only run
        ran = {r["kind"] for r in results}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["kind"] not in ran]
        results = kept + results
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"Python {platform.python_version()}",
        "before": args.before,
        "repeat": args.repeat,
        "tasks": args.tasks,
        "coco": {"images": args.images, "polygons_per_image": args.polygons},
        "results": results,
    }
    (RESULTS / "ingest_database.json").write_text(json.dumps(out, indent=2))
    plot(results, RESULTS / "ingest_database.png")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
