"""`labelloop watch` on CPU with the default segmentation model: latency from a file
closed in the watched folder to its count written, and sustained images per second.

A project of synthetic 256×256 smears is trained for one epoch with the default recipe
(speed does not depend on how well it is trained). Files arrive the way a microscope
writes them: into a hidden temporary name, then renamed into place. Two phases:
  - steady: one image every --interval seconds (latency = settle wait + counting);
  - burst: --burst images at once (sustained images/s, from the first file closed to the
    last count written).
CPU seconds of the process are reported beside wall time (the machine is shared).

Usage: .venv/bin/python benchmarks/watch_latency.py [--steady 20] [--interval 1.0] [--burst 30]
Writes benchmarks/results/watch_latency.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.counting.watch import Watcher
from labelloop.datasets.freeze import freeze
from labelloop.db import migrate
from labelloop.imaging import encode_png
from labelloop.ingest import ingest_path
from labelloop.projects import create_project
from labelloop.runs import execute_run, request_run
from labelloop.synthetic import LABELS, generate_dataset, generate_smear, smear_seed

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def arrive(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)


def phase(watcher: Watcher, n_before: int, n: int, timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(watcher.ledger) < n_before + n and time.monotonic() < deadline:
        time.sleep(0.05)
    return watcher.ledger[n_before:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steady", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--burst", type=int, default=30)
    ap.add_argument("--settle", type=float, default=0.5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="watch-bench-"))
    settings = Settings(
        data_dir=tmp / "data",
        database_url="",
        blob_url="",
        broker_url="memory://",
        result_backend="",
        redis_url="",
    )
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    with ctx.db.session() as s:
        create_project(s, "smears", "segmentation", list(LABELS))
    generate_dataset(tmp / "src", n_labeled=12, n_pool=0)
    ingest_path(ctx, "smears", tmp / "src" / "export.json")
    dv = freeze(ctx, "smears").dataset_version_id
    mv = execute_run(ctx, request_run(ctx, dv, overrides={"epochs": 1}).run_id)
    images = [
        encode_png(generate_smear(smear_seed(99, i), 256).image)
        for i in range(args.steady + args.burst)
    ]
    inbox, out = tmp / "inbox", tmp / "out"
    inbox.mkdir()
    watcher = Watcher(ctx, mv, inbox, out, settle_s=args.settle)
    stop = threading.Event()
    watcher.start()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()

    c0, t0 = cpu_s(), time.perf_counter()
    for i in range(args.steady):
        arrive(inbox, f"steady_{i:03d}.png", images[i])
        time.sleep(args.interval)
    steady = phase(watcher, 0, args.steady)
    steady_cpu, steady_wall = cpu_s() - c0, time.perf_counter() - t0

    c0, t0 = cpu_s(), time.perf_counter()
    for i in range(args.burst):
        arrive(inbox, f"burst_{i:03d}.png", images[args.steady + i])
    burst = phase(watcher, args.steady, args.burst)
    burst_cpu, burst_wall = cpu_s() - c0, time.perf_counter() - t0
    stop.set()
    thread.join()
    watcher.stop()
    lat = np.array([r["latency_s"] for r in steady])
    span = max(r["counted_at"] for r in burst) - min(r["closed_at"] for r in burst)
    out_json = {
        "model": "default segmentation recipe (U-Net), 256x256 smears, CPU",
        "settle_s": args.settle,
        "steady": {
            "images": len(steady),
            "interval_s": args.interval,
            "latency_s": {
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3),
            },
            "cpu_s_per_image": round(steady_cpu / len(steady), 3),
            "wall_s": round(steady_wall, 1),
        },
        "burst": {
            "images": len(burst),
            "images_per_s": round(len(burst) / span, 2),
            "cpu_s_per_image": round(burst_cpu / len(burst), 3),
            "wall_s": round(burst_wall, 1),
        },
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "watch_latency.json").write_text(json.dumps(out_json, indent=2))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.hist(lat, bins=15, color="#2563eb")
    a.axvline(args.settle, color="#9ca3af", ls="--", label=f"settle wait {args.settle} s")
    a.set_xlabel("file closed → count written (s)")
    a.set_ylabel("images")
    a.set_title(f"steady arrival, one every {args.interval} s")
    a.legend()
    b.plot(
        sorted(r["counted_at"] - min(x["closed_at"] for x in burst) for r in burst),
        range(1, len(burst) + 1),
        color="#16a34a",
    )
    b.set_xlabel("seconds after the burst")
    b.set_ylabel("images counted")
    b.set_title(f"burst of {len(burst)}: {out_json['burst']['images_per_s']} images/s")
    fig.tight_layout()
    fig.savefig(RESULTS / "watch_latency.png", dpi=120)
    print(json.dumps(out_json, indent=2))


if __name__ == "__main__":
    main()
