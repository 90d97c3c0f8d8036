"""Pool scoring throughput per method: what each uncertainty method costs per image.

A segmentation model (the demo's U-Net with `dropout: 0.2`, so MC-dropout methods apply)
is trained briefly on synthetic smears through the product's stages; then the same pool of
synthetic 256x256 smears is scored by `score_pool` with one method at a time into a fresh
model-version score set, alternating the methods over `--repeats` rounds so machine noise
hits them alike. Reported: images/s per method (median over repeats) and the cost
relative to the single-pass default (`entropy_mean`), with embeddings stored or not.

Usage: .venv/bin/python benchmarks/scoring_throughput.py [--pool 48] [--repeats 2]
Writes benchmarks/results/scoring_throughput.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sqlalchemy import delete

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelloop.config import Settings  # noqa: E402
from labelloop.context import Context, set_context  # noqa: E402
from labelloop.datasets.freeze import freeze  # noqa: E402
from labelloop.db import migrate  # noqa: E402
from labelloop.db.models import Embedding, Score  # noqa: E402
from labelloop.ingest import ingest_path  # noqa: E402
from labelloop.projects import create_project  # noqa: E402
from labelloop.runs import execute_run, request_run  # noqa: E402
from labelloop.scoring.stage import score_pool  # noqa: E402
from labelloop.synthetic import generate_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CASES = [
    ("entropy_mean", False),
    ("entropy_mean", True),
    ("entropy_top10", False),
    ("entropy_fg", False),
    ("tta_disagreement", False),
    ("bald", False),
    ("mc_variance", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        settings = Settings.embedded_at(tmp_path / "data")
        migrate.upgrade(settings.database_url)
        ctx = Context(settings)
        set_context(ctx)
        with ctx.db.session() as s:
            create_project(s, "bench", "segmentation", ["RBC", "WBC", "Platelets"])
        data = generate_dataset(tmp_path / "src", n_labeled=12, n_pool=args.pool, seed=1)
        ingest_path(ctx, "bench", data.out_dir / "export.json")
        ingest_path(ctx, "bench", data.out_dir / "pool")
        dv = freeze(ctx, "bench").dataset_version_id
        overrides = {"epochs": 3, "dropout": 0.2, "image_size": 128}
        mv = execute_run(ctx, request_run(ctx, dv, overrides=overrides).run_id)
        score_pool(ctx, mv, method="entropy_mean", embed=False)  # warm-up: model load, caches
        timings: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for method, embed in CASES:
                with ctx.db.session() as s:
                    s.execute(delete(Score).where(Score.model_version_id == mv))
                    s.execute(delete(Embedding).where(Embedding.model_version_id == mv))
                t0 = time.perf_counter()
                result = score_pool(ctx, mv, method=method, embed=embed)
                seconds = time.perf_counter() - t0
                assert result.scored == args.pool
                key = f"{method}{' + embeddings' if embed else ''}"
                timings.setdefault(key, []).append(args.pool / seconds)
        set_context(None)
        ctx.close()
    base = statistics.median(timings["entropy_mean"])
    rows = {
        k: {
            "images_per_s": round(statistics.median(v), 2),
            "cost_vs_entropy_mean": round(base / statistics.median(v), 2),
        }
        for k, v in timings.items()
    }
    out = {
        "pool_images": args.pool,
        "image_size": "256x256",
        "model": "U-Net resnet18 depth 3 + dropout 0.2 (demo recipe), CPU",
        "repeats": args.repeats,
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scoring_throughput.json").write_text(json.dumps(out, indent=1))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = list(rows)
    ax.barh(names, [rows[n]["images_per_s"] for n in names], color="#4c72b0")
    ax.set_xlabel("images / s (higher is better)")
    ax.invert_yaxis()
    for i, n in enumerate(names):
        ax.text(rows[n]["images_per_s"], i, f"  {rows[n]['images_per_s']:.1f}", va="center")
    ax.set_title(f"scoring {args.pool} synthetic smears, 2 CPU cores")
    fig.tight_layout()
    fig.savefig(RESULTS / "scoring_throughput.png", dpi=110)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
