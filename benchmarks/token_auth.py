"""What a database token costs per request, beside an environment token.

An environment token (LABELLOOP_API_TOKENS) is compared in memory; a token made by
`labelloop tokens create` is looked up by its sha256 in PostgreSQL on every request (so
a revocation takes effect at once), and a token limited to a project also resolves the
project of an object addressed by id. Measured two ways, side by side in one run:

- in process: `labelloop.access.authenticate` called N times per kind, CPU seconds and
  wall time per call;
- through `labelloop serve` (one uvicorn process, fresh PostgreSQL database): sequential
  `GET /runs/{id}` requests, the three kinds interleaved (env, database, database
  limited to the project) so the machine's noise hits them alike.

Usage: .venv/bin/python benchmarks/token_auth.py [--calls 2000] [--requests 600]
Writes benchmarks/results/token_auth.json and token_auth.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.serving import wait_healthy  # noqa: E402

RESULTS = HERE / "results"
ENV_TOKEN = "bench-env-" + "0" * 32
PG_ADMIN = os.environ.get(
    "LABELLOOP_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
KINDS = ("env", "db", "db_scoped")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "mean_ms": round(statistics.fmean(values) * 1000, 3),
        "p50_ms": round(at(0.5) * 1000, 3),
        "p90_ms": round(at(0.9) * 1000, 3),
        "p99_ms": round(at(0.99) * 1000, 3),
    }


def _seed(url: str) -> tuple[dict[str, str], int]:
    """A project with one pipeline run; a database token of all projects and one of the
    project. Returns the tokens by kind and the run id."""
    from labelloop.access import create_token
    from labelloop.config import Settings
    from labelloop.context import Context
    from labelloop.db import migrate
    from labelloop.db.models import PipelineRun
    from labelloop.projects import create_project

    migrate.upgrade(url)
    ctx = Context(Settings(database_url=url, api_tokens={"ops": ENV_TOKEN}))
    with ctx.db.session() as s:
        p, _ = create_project(s, "bench", "segmentation", ["RBC"])
        run = PipelineRun(project_id=p.id, trigger="cli", status="succeeded")
        s.add(run)
        s.flush()
        run_id = run.id
    tokens = {
        "env": ENV_TOKEN,
        "db": create_token(ctx, "bench-all", "read")["token"],
        "db_scoped": create_token(ctx, "bench-one", "read", "bench")["token"],
    }
    ctx.close()
    return tokens, run_id


def _in_process(url: str, tokens: dict[str, str], calls: int) -> dict:
    from labelloop.access import authenticate
    from labelloop.config import Settings
    from labelloop.context import Context

    ctx = Context(Settings(database_url=url, api_tokens={"ops": ENV_TOKEN}))
    env = {"ops": ENV_TOKEN}
    out = {}
    for kind in ("env", "db"):
        authenticate(ctx, env, tokens[kind])  # warm the connection pool
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            assert authenticate(ctx, env, tokens[kind]) is not None
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        out[kind] = {
            "calls": calls,
            "cpu_us_per_call": round(cpu / calls * 1e6, 1),
            "wall_us_per_call": round(wall / calls * 1e6, 1),
        }
    ctx.close()
    return out


def _through_server(url: str, tokens: dict[str, str], run_id: int, requests: int) -> dict:
    import httpx

    port = _free_port()
    env = {
        **os.environ,
        "LABELLOOP_DATABASE_URL": url,
        "LABELLOOP_API_TOKENS": json.dumps({"ops": ENV_TOKEN}),
        "LABELLOOP_DATA_DIR": tempfile.mkdtemp(prefix="token-bench-"),
    }
    log = open(Path(env["LABELLOOP_DATA_DIR"]) / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelloop.cli", "serve", "--port", str(port),
         "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, timeout=180)
        samples: dict[str, list[float]] = {k: [] for k in KINDS}
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(requests + 30):
                kind = KINDS[i % len(KINDS)]
                start = time.perf_counter()
                r = client.get(
                    f"/runs/{run_id}", headers={"Authorization": f"Bearer {tokens[kind]}"}
                )
                elapsed = time.perf_counter() - start
                assert r.status_code == 200, r.text
                if i >= 30:  # the first requests warm connections and imports
                    samples[kind].append(elapsed)
        return {k: {"requests": len(v), **_percentiles(v)} for k, v in samples.items()}, samples
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()

    import psycopg

    name = f"token_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    netloc = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql+psycopg://{netloc}/{name}"
    try:
        tokens, run_id = _seed(url)
        in_process = _in_process(url, tokens, args.calls)
        server, samples = _through_server(url, tokens, run_id, args.requests)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "in_process_authenticate": in_process,
        "server_get_run": server,
        "command": f"python benchmarks/token_auth.py --calls {args.calls} "
        f"--requests {args.requests}",
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "token_auth.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(samples)
    print(json.dumps(result, indent=2))


def _plot(samples: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {
        "env": "environment token",
        "db": "database token",
        "db_scoped": "database, one project",
    }
    ax.boxplot([[v * 1000 for v in samples[k]] for k in KINDS], showfliers=False)
    ax.set_xticks(range(1, len(KINDS) + 1), [labels[k] for k in KINDS])
    ax.set_ylabel("GET /runs/{id} latency (ms)")
    ax.set_title("labelloop serve on PostgreSQL, requests interleaved by token kind")
    fig.tight_layout()
    fig.savefig(RESULTS / "token_auth.png", dpi=110)


if __name__ == "__main__":
    main()
