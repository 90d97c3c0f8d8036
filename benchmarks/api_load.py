"""Webhook + API latency under load: `labelloop serve` on loopback, driven at a fixed rate by
a second process (open loop: requests leave on schedule whether or not earlier ones have
answered, so a slow server shows up as latency rather than as a lower rate).

The mix is half Label Studio webhooks (ANNOTATION_CREATED with its payload, the shared
secret, recorded in PostgreSQL; the project's threshold is reached during the run, so one
debounced pipeline is queued in Redis and every later event joins it) and half
`GET /projects/{p}/runs` with a bearer token. The server runs against a fresh PostgreSQL
database and a private redis-server (SQLite and the in-memory broker when they are not
available). Afterwards the database must hold exactly one event per webhook sent.

With `--attackers N`, N more connections meanwhile send oversized bodies without pause
(a 500 MB Content-Length without a token, the same with a token, and a chunked body with
a token that never ends), and the server's resident memory is sampled every 0.2 s: the
legitimate requests must see no error and the memory must stay bounded.

Usage: .venv/bin/python benchmarks/api_load.py [--rate 100] [--duration 30] [--workers 1]
       [--attackers 10]
Writes benchmarks/results/api_load.json and api_load.png (api_load_attack.* with
attackers)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.serving import wait_healthy  # noqa: E402

RESULTS = HERE / "results"
TOKEN = "bench-" + "0" * 32
SECRET = "bench-secret"
PROJECT = "bench"
LS_PROJECT = 1
PG_ADMIN = os.environ.get(
    "LABELLOOP_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 2):
            return True
    except OSError:
        return False


def _event(i: int) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": 10_000 + i,
            "task": 5_000 + i,
            "project": LS_PROJECT,
            "result": [
                {
                    "type": "rectanglelabels",
                    "from_name": "box",
                    "to_name": "image",
                    "value": {
                        "x": 10,
                        "y": 10,
                        "width": 5,
                        "height": 5,
                        "rectanglelabels": ["RBC"],
                    },
                }
            ],
            "was_cancelled": False,
            "completed_by": 1,
        },
        "task": {"id": 5_000 + i, "data": {"image": f"/data/upload/1/{i}.png"}},
        "project": {"id": LS_PROJECT, "title": "bench"},
    }


# -- the load generator (runs in its own process) -----------------------------------------


async def _generate(url: str, rate: float, duration: float, webhook_share: float) -> list:
    import httpx

    n = int(rate * duration)
    # Several small pools, not one large one: httpcore matches queued requests to
    # connections in a loop over both, so with thousands queued (a server that slowed down
    # for a second) one pool's bookkeeping takes the load generator's whole CPU and the
    # measurement becomes the client's own backlog.
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
    samples: list[tuple[str, float, float, int]] = []  # kind, start offset, latency, status
    clients = [httpx.AsyncClient(base_url=url, timeout=10, limits=limits) for _ in range(8)]
    t0 = time.perf_counter()

    async def send(i: int, webhook: bool):
        client = clients[i % len(clients)]
        if webhook:
            return await client.post(
                f"/webhooks/labelstudio/{PROJECT}",
                json=_event(i),
                headers={"X-Labelloop-Webhook-Secret": SECRET},
            )
        return await client.get(
            f"/projects/{PROJECT}/runs",
            params={"limit": 20},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )

    async def one(i: int) -> None:
        webhook = (i * webhook_share) % 1 + webhook_share > 1 - 1e-9
        start = time.perf_counter()
        try:
            status = (await asyncio.wait_for(send(i, webhook), timeout=15)).status_code
        except (httpx.HTTPError, TimeoutError):
            status = 0  # no answer (in time) counts as an error
        samples.append(
            ("webhook" if webhook else "api", start - t0, time.perf_counter() - start, status)
        )

    try:
        tasks = []
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)  # each request gives up after 15 s
    finally:
        for client in clients:
            await client.aclose()
    return samples


def generator_main(args: argparse.Namespace) -> None:
    samples = asyncio.run(_generate(args.url, args.rate, args.duration, args.webhook_share))
    sys.stdout.write(json.dumps(samples))


# -- oversized bodies and the server's memory ------------------------------------------------

HUGE = 500_000_000
PIECE = b"0," * 32 * 1024  # 64 KiB of a JSON array that never closes


def _attack_once(port: int, kind: int) -> tuple[str, int, int]:
    """One oversized request; returns (kind, status or 0, bytes sent before the answer)."""
    name = ("anonymous", "token", "token-chunked")[kind]
    head = [f"POST /projects/{PROJECT}/runs HTTP/1.1", "Host: 127.0.0.1",
            "Content-Type: application/json"]  # fmt: skip
    if kind:
        head.append(f"Authorization: Bearer {TOKEN}")
    head.append("Transfer-Encoding: chunked" if kind == 2 else f"Content-Length: {HUGE}")
    frame = (f"{len(PIECE):x}\r\n".encode() + PIECE + b"\r\n") if kind == 2 else PIECE
    sent = 0
    import select

    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            while sent < HUGE and not select.select([sock], [], [], 0)[0]:
                sock.sendall(frame)
                sent += len(PIECE)
            reply = sock.recv(256)
        except OSError:
            reply = b""
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return name, status, sent


def _attack(port: int, kind: int, stop: threading.Event, out: list, pause: float) -> None:
    """One attacking connection at a time, again `pause` seconds after each refusal: N
    attackers keep up to N oversized bodies in flight. (Without a pause they become a flood
    of requests, a matter of rate limits in front of the API, not of body size.)"""
    while not stop.is_set():
        try:
            out.append(_attack_once(port, kind))
        except OSError:
            out.append((("anonymous", "token", "token-chunked")[kind], 0, 0))
        stop.wait(pause)


def _rss_kib(pid: int) -> int:
    """Resident memory of the server process and its children (uvicorn workers)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if pid in (int(fields.get("Pid", 0)), int(fields.get("PPid", 0))):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def _sample_rss(pid: int, stop: threading.Event, out: list) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - t0, _rss_kib(pid) / 1024))
        stop.wait(0.2)


# -- the server and its services -------------------------------------------------------------


class Services:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.pg_db: str | None = None
        self.redis: subprocess.Popen | None = None
        self.env: dict[str, str] = {"LABELLOOP_DATA_DIR": str(tmp / "data")}
        self.database = "sqlite"
        self.broker = "memory"

    def __enter__(self) -> Services:
        if _reachable("127.0.0.1", 5432):
            import psycopg

            self.pg_db = f"labelloop_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_db}"')
            admin = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            self.env["LABELLOOP_DATABASE_URL"] = f"{admin}/{self.pg_db}"
            self.database = "postgresql"
        binary = shutil.which("redis-server")
        if binary:
            port = _free_port()
            self.redis = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.tmp)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while not _reachable("127.0.0.1", port):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
            url = f"redis://127.0.0.1:{port}/0"
            self.env.update(
                LABELLOOP_BROKER_URL=url, LABELLOOP_RESULT_BACKEND=url, LABELLOOP_REDIS_URL=url
            )
            self.broker = "redis"
        return self

    def __exit__(self, *exc) -> None:
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        if self.pg_db:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (self.pg_db,),
                )
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}"')


def _settings(env: dict[str, str]):
    from labelloop.config import Settings

    keys = ("DATA_DIR", "DATABASE_URL", "BROKER_URL", "RESULT_BACKEND", "REDIS_URL")
    return Settings(**{k.lower(): env[f"LABELLOOP_{k}"] for k in keys if f"LABELLOOP_{k}" in env})


def _prepare(env: dict[str, str], threshold: int) -> None:
    from labelloop.context import Context
    from labelloop.db import migrate
    from labelloop.pipelines.triggers import link_labelstudio, update_triggers
    from labelloop.projects import create_project

    settings = _settings(env)
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    with ctx.db.session() as s:
        p, _ = create_project(s, PROJECT, "detection", ["RBC", "WBC"])
        link_labelstudio(p, "http://label-studio:8080", LS_PROJECT)
        update_triggers(p, {"min_annotations": threshold, "debounce_s": 600})
    ctx.close()


def _db_counts(env: dict[str, str]) -> dict[str, int]:
    from sqlalchemy import func, select

    from labelloop.context import Context
    from labelloop.db.models import PipelineRun, WebhookEvent

    ctx = Context(_settings(env))
    with ctx.db.session() as s:
        out = {
            "webhook_events": s.scalar(select(func.count()).select_from(WebhookEvent)),
            "pipeline_runs": s.scalar(select(func.count()).select_from(PipelineRun)),
            "events_joined_to_a_run": s.scalar(
                select(func.count()).where(WebhookEvent.pipeline_run_id.is_not(None))
            ),
        }
    ctx.close()
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(q[49] * 1000, 2),
        "p90_ms": round(q[89] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    ap.add_argument("--webhook-share", type=float, default=0.5)
    ap.add_argument("--attackers", type=int, default=0, help="connections sending huge bodies")
    ap.add_argument(
        "--attack-pause", type=float, default=0.2, help="seconds an attacker waits after a refusal"
    )
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generator_main(args)
        return

    n = int(args.rate * args.duration)
    threshold = max(1, int(n * args.webhook_share / 2))  # crossed half-way through
    with tempfile.TemporaryDirectory() as tmp, Services(Path(tmp)) as services:
        env = {
            **services.env,
            "LABELLOOP_API_TOKENS": json.dumps({"bench": TOKEN}),
            "LABELLOOP_WEBHOOK_SECRET": SECRET,
        }
        _prepare(env, threshold)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "labelloop.cli", "serve", "--port", str(port),
             "--workers", str(args.workers), "--log-level", "warning"],
            cwd=REPO,
            env={**os.environ, **env},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, server)
            stop = threading.Event()
            attacks: list = []
            rss: list = []
            idle_rss_mib = _rss_kib(server.pid) / 1024
            helpers = [threading.Thread(target=_sample_rss, args=(server.pid, stop, rss))]
            helpers += [
                threading.Thread(
                    target=_attack, args=(port, i % 3, stop, attacks, args.attack_pause)
                )
                for i in range(args.attackers)
            ]
            for t in helpers:
                t.start()
            started = time.monotonic()
            out = subprocess.run(
                [sys.executable, __file__, "--generate", "--url", url, "--rate", str(args.rate),
                 "--duration", str(args.duration), "--webhook-share", str(args.webhook_share)],
                capture_output=True,
                text=True,
                check=True,
                timeout=args.duration * 3 + 120,
            )  # fmt: skip
            wall = time.monotonic() - started
        finally:
            stop.set()
            for t in helpers:
                t.join(timeout=30)
            server.terminate()
            server.wait(timeout=30)
        samples = json.loads(out.stdout)
        counts = _db_counts(env)

    by_kind: dict[str, dict] = {}
    for kind in ("webhook", "api"):
        rows = [s for s in samples if s[0] == kind]
        ok = [s for s in rows if 200 <= s[3] < 300]
        by_kind[kind] = {
            "requests": len(rows),
            "errors": len(rows) - len(ok),
            "statuses": {
                str(c): sum(1 for s in rows if s[3] == c) for c in sorted({s[3] for s in rows})
            },
            **_percentiles([s[2] for s in ok]),
        }
    everything = _percentiles([s[2] for s in samples if 200 <= s[3] < 300])
    last_start = max(s[1] for s in samples)
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "database": services.database,
            "broker": services.broker,
            "uvicorn_workers": args.workers,
            "offered_rate_per_s": args.rate,
            "duration_s": args.duration,
            "webhook_share": args.webhook_share,
            "retrain_threshold": threshold,
        },
        "requests": len(samples),
        "errors": sum(k["errors"] for k in by_kind.values()),
        "achieved_rate_per_s": round(len(samples) / last_start, 1) if last_start else None,
        "generator_wall_s": round(wall, 1),
        "all": everything,
        "by_kind": by_kind,
        "database_after": counts,
        "lossless": counts["webhook_events"] == by_kind["webhook"]["requests"]
        and counts["pipeline_runs"] == 1,
        "server_rss_mib": {
            "idle": round(idle_rss_mib, 1),
            "max": round(max((m for _, m in rss), default=0), 1),
        },
    }
    name = "api_load"
    if args.attackers:
        name = "api_load_attack"
        from labelloop.config import Settings

        summary["attack"] = {
            "attackers": args.attackers,
            "pause_after_refusal_s": args.attack_pause,
            "body_limit_bytes": Settings().api_max_body_bytes,
            "requests": len(attacks),
            "statuses": {
                f"{kind} {status}": sum(1 for a in attacks if a[:2] == (kind, status))
                for kind, status in sorted({a[:2] for a in attacks})
            },
            "max_bytes_sent_before_answer": max((a[2] for a in attacks), default=0),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
    _plot(samples, summary, rss, name)
    print(json.dumps(summary, indent=2))


def _plot(samples: list, summary: dict, rss: list, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"webhook": "#1e88e5", "api": "#fb8c00"}
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    for kind, color in colors.items():
        rows = [s for s in samples if s[0] == kind]
        a.scatter(
            [s[1] for s in rows], [s[2] * 1000 for s in rows], s=3, alpha=0.4, c=color, label=kind
        )
        lat = sorted(s[2] * 1000 for s in rows)
        b.plot(lat, [i / len(lat) for i in range(len(lat))], color=color, label=kind)
    a.set_yscale("log")
    a.set_xlabel("time into the run (s)")
    a.set_ylabel("latency (ms)")
    setup = summary["setup"]
    a.set_title(
        f"{setup['offered_rate_per_s']:.0f} req/s offered, {setup['database']} + {setup['broker']}"
    )
    a.legend(markerscale=4)
    b.set_xscale("log")
    b.set_xlabel("latency (ms)")
    b.set_ylabel("fraction of requests")
    p = summary["all"]
    b.set_title(f"p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, {summary['errors']} errors")
    b.axhline(0.99, color="grey", lw=0.8, ls="--")
    b.legend()
    c.plot([t for t, _ in rss], [m for _, m in rss], color="#43a047")
    c.set_xlabel("time into the run (s)")
    c.set_ylabel("server RSS (MiB)")
    attack = summary.get("attack")
    c.set_title(
        f"{attack['attackers']} connections sending 500 MB bodies" if attack else "server memory"
    )
    c.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


if __name__ == "__main__":
    main()
