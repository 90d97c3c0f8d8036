"""Real services: a fresh PostgreSQL database per session, a Redis database, and real
`celery worker` processes. URLs come from the environment with loopback defaults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support import REPO, require

PG_ADMIN_URL = os.environ.get(
    "LABELLOOP_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LABELLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def _reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url():
    """A new, empty database on the real PostgreSQL server, dropped afterwards."""
    require(_reachable(PG_ADMIN_URL, 5432), f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    import psycopg

    name = f"labelloop_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    u = urlparse(PG_ADMIN_URL)
    url = f"postgresql+psycopg://{u.netloc}/{name}"
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def redis_url():
    require(_reachable(REDIS_URL, 6379), f"Redis is not reachable at {REDIS_URL}")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture(scope="session")
def service_env(pg_url, redis_url, tmp_path_factory) -> dict[str, str]:
    """LABELLOOP_* settings shared by the test process and its worker processes."""
    from labelloop.db import migrate

    migrate.upgrade(pg_url)
    data_dir = tmp_path_factory.mktemp("labelloop-data")
    return {
        "LABELLOOP_DATABASE_URL": pg_url,
        "LABELLOOP_BROKER_URL": redis_url,
        "LABELLOOP_RESULT_BACKEND": redis_url,
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_DATA_DIR": str(data_dir),
    }


@pytest.fixture(scope="session")
def service_settings(service_env):
    from labelloop.config import Settings

    return Settings(**{k.removeprefix("LABELLOOP_").lower(): v for k, v in service_env.items()})


class WorkerProcess:
    """A real `celery worker` subprocess with its own log file."""

    def __init__(
        self, env: dict[str, str], log: Path, queues: str = "io,cpu,gpu", name: str | None = None
    ):
        self.log = log
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "labelloop_workers.app",
            "worker",
            "-Q",
            queues,
            "-P",
            "solo",
            "-c",
            "1",
            "-n",
            f"{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.tail()}")
            if b" ready." in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_bytes()[-n:].decode(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(service_env, tmp_path):
    """Factory: start_worker(queues='io,cpu,gpu') -> a ready WorkerProcess (stopped after)."""
    workers: list[WorkerProcess] = []

    def start(queues: str = "io,cpu,gpu", extra_env: dict | None = None) -> WorkerProcess:
        w = WorkerProcess(
            {**service_env, **(extra_env or {})}, tmp_path / f"worker-{len(workers)}.log", queues
        )
        workers.append(w)
        w.wait_ready()
        return w

    yield start
    for w in workers:
        w.stop()


@pytest.fixture
def celery_app(service_settings):
    """The production Celery app, configured for the test services."""
    from labelloop_workers.app import make_app

    app = make_app(service_settings)
    app.set_current()
    yield app
    app.close()
