"""The Label Studio ML backend's `/predict`: latency per task and a 100-task batch.

A segmentation model (the default U-Net, trained briefly on synthetic smears through the
product's stages and promoted) serves `POST /ml/<project>/predict` through the real
FastAPI app (in process: JSON, basic auth, routing included). Tasks name pool images the
way a pushed task does, so the image comes from the blob store and the time is the
backend's own (Label Studio's image download is not in it). Measured, warm model:

- one task per request, each a new image (the model runs): p50 / p95 latency;
- the same tasks again (the per (model version, image) cache answers): p50 / p95;
- one request of `--batch` new tasks, what "Retrieve predictions" on 100 selected tasks
  sends: tasks/s.

CPU seconds of the process are reported beside wall time (the machine is shared).

Usage: .venv/bin/python benchmarks/ml_backend.py [--single 30] [--batch 100]
Writes benchmarks/results/ml_backend.json and .png.
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select  # noqa: E402

from labelloop.api.app import create_app  # noqa: E402
from labelloop.config import Settings  # noqa: E402
from labelloop.context import Context, set_context  # noqa: E402
from labelloop.datasets.freeze import freeze  # noqa: E402
from labelloop.db import migrate  # noqa: E402
from labelloop.db.models import Image  # noqa: E402
from labelloop.ingest import ingest_path  # noqa: E402
from labelloop.labelstudio.label_config import task_label_config  # noqa: E402
from labelloop.projects import create_project  # noqa: E402
from labelloop.runs import execute_run, request_run  # noqa: E402
from labelloop.synthetic import generate_dataset  # noqa: E402
from labelloop.training.harness import compute_threads  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LABELS = ["RBC", "WBC", "Platelets"]
SECRET = "bench-secret-" + "x" * 20


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=30, help="one-task requests")
    parser.add_argument("--batch", type=int, default=100, help="tasks in the batch request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        settings = Settings.embedded_at(
            tmp_path / "data", webhook_secret=SECRET, api_tokens={"bench": "b" * 32}
        )
        migrate.upgrade(settings.database_url)
        ctx = Context(settings)
        set_context(ctx)
        with ctx.db.session() as s:
            create_project(s, "bench", "segmentation", LABELS)
        pool = args.single + args.batch + 1  # + the warm-up task
        data = generate_dataset(tmp_path / "src", n_labeled=12, n_pool=pool, seed=3)
        ingest_path(ctx, "bench", data.out_dir / "export.json")
        ingest_path(ctx, "bench", data.out_dir / "pool")
        dv = freeze(ctx, "bench").dataset_version_id
        # Speed does not depend on the weights: a short training at 128 px crops; inference
        # runs the same default network on the full 256 px images.
        tiny = {"epochs": 1, "image_size": 128, "batch_size": 4}
        execute_run(ctx, request_run(ctx, dv, overrides=tiny).run_id)
        print("trained", flush=True)
        with ctx.db.session() as s:  # the pool: ingested after the 12 labelled images
            shas = s.scalars(select(Image.sha256).order_by(Image.id)).all()[12:]
        assert len(shas) >= pool, (len(shas), pool)
        tasks = [
            {"id": i, "data": {"image": f"/data/upload/1/{sha[:8]}.png", "labelloop_key": sha}}
            for i, sha in enumerate(shas[:pool])
        ]
        client = TestClient(create_app(settings))
        auth = base64.b64encode(f"labelstudio:{SECRET}".encode()).decode()
        headers = {"Authorization": f"Basic {auth}"}
        config = task_label_config(LABELS, "segmentation")

        def predict(batch: list[dict]) -> float:
            t0 = time.perf_counter()
            r = client.post(
                "/ml/bench/predict",
                json={"tasks": batch, "label_config": config, "project": "1.1", "params": {}},
                headers=headers,
            )
            seconds = time.perf_counter() - t0
            assert r.status_code == 200 and len(r.json()["results"]) == len(batch), r.text
            return seconds

        predict(tasks[:1])  # warm-up: model load, first forward pass
        print("warm", flush=True)
        single = tasks[1 : args.single + 1]
        cpu0 = _cpu()
        cold = [predict([t]) for t in single]
        cold_cpu = (_cpu() - cpu0) / len(single)
        cpu0 = _cpu()
        warm = [predict([t]) for t in single]
        warm_cpu = (_cpu() - cpu0) / len(single)
        batch = tasks[args.single + 1 : args.single + 1 + args.batch]
        cpu0 = _cpu()
        batch_s = predict(batch)
        batch_cpu = _cpu() - cpu0
        set_context(None)
        ctx.close()
    out = {
        "model": "U-Net resnet18 depth 3 (default segmentation recipe), CPU",
        "threads": compute_threads(),
        "image_size": "256x256",
        "single_task_new_image": {
            "n": len(cold),
            "p50_ms": round(1000 * statistics.median(cold), 1),
            "p95_ms": round(1000 * _pct(cold, 0.95), 1),
            "cpu_s_per_task": round(cold_cpu, 3),
        },
        "single_task_cached": {
            "n": len(warm),
            "p50_ms": round(1000 * statistics.median(warm), 1),
            "p95_ms": round(1000 * _pct(warm, 0.95), 1),
            "cpu_s_per_task": round(warm_cpu, 4),
        },
        "batch": {
            "tasks": len(batch),
            "seconds": round(batch_s, 2),
            "tasks_per_s": round(len(batch) / batch_s, 2),
            "cpu_s": round(batch_cpu, 2),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ml_backend.json").write_text(json.dumps(out, indent=1))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist([1000 * c for c in cold], bins=15, color="#4c72b0", label="new image (model runs)")
    ax.hist([1000 * w for w in warm], bins=15, color="#dd8452", label="cached (model, image)")
    ax.set_xlabel("POST /predict, one task: latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(
        f"ML backend /predict; {out['batch']['tasks']}-task batch: "
        f"{out['batch']['tasks_per_s']} tasks/s",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ml_backend.png", dpi=120)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
