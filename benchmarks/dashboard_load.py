"""Server time of the dashboard's project page for a large project: 10,000 images, 100
model versions (with training runs and promotions), 10 dataset versions growing to 8,000
labelled images, 20 rounds, 50 pipeline runs and 200 webhook events.

The rows are bulk-inserted into a fresh PostgreSQL database (dropped afterwards); the page
is requested in process through the ASGI app (FastAPI's TestClient, no network), so the
time is the server's: queries, template and SVG rendering. CPU seconds of this process are
reported beside wall time (PostgreSQL's own work runs in its processes).

Usage: .venv/bin/python benchmarks/dashboard_load.py [--requests 40]
Writes benchmarks/results/dashboard_load.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlalchemy import insert

from labelloop.db import models as m

RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN = os.environ.get(
    "LABELLOOP_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IMAGES, MODELS, DATASETS, ROUNDS = 10_000, 100, 10, 20


def seed(ctx, name: str) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    labels = ["RBC", "WBC", "Platelets"]
    with ctx.db.session() as s:
        p = m.Project(name=name, task="segmentation", settings={})
        s.add(p)
        s.flush()
        for i, lb in enumerate(labels):
            s.add(m.LabelClass(project_id=p.id, name=lb, index=i))
        pid = p.id
        base = (
            s.execute(
                insert(m.Image).returning(m.Image.id),
                [
                    {
                        "sha256": uuid.uuid4().hex * 2,
                        "blob_key": f"images/{i}.png",
                        "width": 256,
                        "height": 256,
                        "format": "png",
                    }
                    for i in range(IMAGES)
                ],
            )
            .scalars()
            .all()
        )
        items = (
            s.execute(
                insert(m.SourceItem).returning(m.SourceItem.id),
                [
                    {
                        "project_id": pid,
                        "image_id": iid,
                        "source": "bench",
                        "external_id": str(iid),
                        "meta": {},
                    }
                    for iid in base
                ],
            )
            .scalars()
            .all()
        )
        shape = [{"kind": "box", "label": "RBC", "x": 1, "y": 1, "w": 5, "h": 5}]
        labelled = int(IMAGES * 0.8)
        anns = (
            s.execute(
                insert(m.Annotation).returning(m.Annotation.id),
                [
                    {
                        "project_id": pid,
                        "source_item_id": items[k],
                        "image_id": base[k],
                        "source": "bench",
                        "external_id": str(base[k]),
                        "revision": "r1",
                        "state": "active",
                        "shapes": shape,
                        "created_at": t0 + timedelta(minutes=k),
                    }
                    for k in range(labelled)
                ],
            )
            .scalars()
            .all()
        )
        dvs, parent = [], None
        for v in range(1, DATASETS + 1):
            n = labelled * v // DATASETS
            dv = m.DatasetVersion(
                project_id=pid,
                number=v,
                content_hash=uuid.uuid4().hex,
                parent_id=parent,
                split_seed=0,
                manifest_key="x",
                stats={"images": n, "splits": {"train": n}},
                created_at=t0 + timedelta(days=v),
            )
            s.add(dv)
            s.flush()
            s.execute(
                insert(m.DatasetItem),
                [
                    {
                        "dataset_version_id": dv.id,
                        "image_id": base[k],
                        "annotation_id": anns[k],
                        "split": "train",
                    }
                    for k in range(n)
                ],
            )
            dvs.append(dv.id)
            parent = dv.id
        for k in range(MODELS):
            dv = dvs[k * DATASETS // MODELS]
            tr = m.TrainingRun(
                project_id=pid,
                dataset_version_id=dv,
                recipe={},
                recipe_hash=uuid.uuid4().hex,
                status="succeeded",
                progress={
                    "epoch": 10,
                    "epochs": 10,
                    "loss": 0.1,
                    "curve": [[e, 1 / e] for e in range(1, 11)],
                },
            )
            s.add(tr)
            s.flush()
            dice = 0.5 + 0.4 * k / MODELS
            mv = m.ModelVersion(
                project_id=pid,
                name=f"{name}-m{k + 1}",
                training_run_id=tr.id,
                dataset_version_id=dv,
                artifact_key="x",
                sha256="0" * 64,
                recipe={},
                metrics={
                    "primary_metric": "mean_dice",
                    "epochs": 10,
                    "test": {"mean_dice": dice, "per_class": {lb: {"dice": dice} for lb in labels}},
                },
                stage="production" if k == MODELS - 1 else "archived",
            )
            s.add(mv)
            s.flush()
            s.add(
                m.Promotion(
                    model_version_id=mv.id,
                    from_stage="candidate",
                    to_stage="production",
                    reason="better",
                    evidence={"d": dice},
                )
            )
            s.add(
                m.PipelineRun(
                    project_id=pid,
                    trigger="beat",
                    status="succeeded",
                    stage="push",
                    training_run_id=tr.id,
                )
            ) if k >= 50 else None
        for r in range(1, ROUNDS + 1):
            rnd = m.AnnotationRound(
                project_id=pid,
                number=r,
                strategy="uncertainty",
                params={},
                params_hash=uuid.uuid4().hex,
                status="open",
            )
            s.add(rnd)
            s.flush()
            s.execute(
                insert(m.RoundItem),
                [
                    {
                        "round_id": rnd.id,
                        "image_id": base[labelled + (r * 50 + j) % 2000],
                        "rank": j + 1,
                        "score": 0.5,
                    }
                    for j in range(50)
                ],
            )
        s.execute(
            insert(m.WebhookEvent),
            [
                {"project_id": pid, "action": "ANNOTATION_CREATED", "annotations": 1}
                for _ in range(200)
            ],
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()
    import psycopg
    from fastapi.testclient import TestClient

    from labelloop.config import Settings
    from labelloop.context import Context, set_context
    from labelloop.db import migrate
    from labelloop.web.app import create_app

    db = f"labelloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg://{urlparse(PG_ADMIN).netloc}/{db}"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / db
    try:
        migrate.upgrade(url)
        settings = Settings(
            database_url=url,
            data_dir=tmp,
            broker_url="memory://",
            result_backend="",
            redis_url="",
            api_tokens={"b": "t" * 32},
        )
        ctx = Context(settings)
        set_context(ctx)
        t = time.perf_counter()
        seed(ctx, "big")
        seed_s = time.perf_counter() - t
        client = TestClient(create_app(settings))
        client.post("/login", data={"token": "t" * 32, "next": "/"}, follow_redirects=False)
        for _ in range(3):  # warm-up: imports, template compilation, PostgreSQL caches
            assert client.get("/p/big").status_code == 200
        wall, cpu = [], []
        for _ in range(args.requests):
            r0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            resp = client.get("/p/big")
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            wall.append(time.perf_counter() - r0)
            cpu.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
            assert resp.status_code == 200 and "big-m100" in resp.text
        live = []
        for _ in range(args.requests):
            r0 = time.perf_counter()
            assert client.get("/p/big/live.json").status_code == 200
            live.append(time.perf_counter() - r0)
        out = {
            "images": IMAGES,
            "model_versions": MODELS,
            "dataset_versions": DATASETS,
            "rounds": ROUNDS,
            "requests": args.requests,
            "seed_s": round(seed_s, 1),
            "page_bytes": len(resp.content),
            "project_page_wall_ms": {
                "p50": round(1000 * float(np.percentile(wall, 50)), 1),
                "p95": round(1000 * float(np.percentile(wall, 95)), 1),
            },
            "project_page_cpu_ms": {
                "p50": round(1000 * float(np.percentile(cpu, 50)), 1),
                "p95": round(1000 * float(np.percentile(cpu, 95)), 1),
            },
            "live_json_wall_ms": {
                "p50": round(1000 * float(np.percentile(live, 50)), 1),
                "p95": round(1000 * float(np.percentile(live, 95)), 1),
            },
            "cpus": os.cpu_count(),
        }
        ctx.close()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (db,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dashboard_load.json").write_text(json.dumps(out, indent=2))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist([1000 * w for w in wall], bins=20, color="#2563eb", alpha=0.8, label="project page")
    ax.hist([1000 * w for w in live], bins=20, color="#16a34a", alpha=0.8, label="live.json")
    ax.set_xlabel("server time per request (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"dashboard, {IMAGES:,} images, {MODELS} model versions (PostgreSQL)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "dashboard_load.png", dpi=120)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
