"""A broker that stalls (a private redis-server stopped with SIGSTOP: connections open,
nothing answers) while `labelloop serve` queues a run: the request gets a clear 503
within the publish timeout instead of hanging as long as the stall, and the run it had
recorded is marked failed, so the project is not blocked."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pytest

from labelloop.context import Context
from labelloop.ingest import ingest_path
from labelloop.projects import create_project
from tests.factories import small_export
from tests.integration.services import ApiServer, PrivateRedis, redis_server_binary
from tests.support import require

pytestmark = pytest.mark.integration

TOKEN = "t-" + uuid.uuid4().hex


def test_a_stalled_broker_gets_a_503_quickly_and_frees_the_project(
    service_env, service_settings, tmp_path
):
    require(redis_server_binary() is not None, "redis-server is not installed")
    project = f"stall-{uuid.uuid4().hex[:6]}"
    ctx = Context(service_settings)
    with ctx.db.session() as s:
        create_project(s, project, "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, project, small_export(tmp_path / "src", n=2))
    broker = PrivateRedis(tmp_path / "redis")
    broker.start()
    env = {
        **service_env,
        "LABELLOOP_BROKER_URL": broker.url,
        "LABELLOOP_RESULT_BACKEND": broker.url,
        "LABELLOOP_REDIS_URL": broker.url,
        "LABELLOOP_PUBLISH_TIMEOUT_S": "2",
        "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN}),
    }
    resume = threading.Timer(60, lambda: os.kill(broker.proc.pid, signal.SIGCONT))
    try:
        with ApiServer.running(env, tmp_path / "serve.log", TOKEN) as api:
            os.kill(broker.proc.pid, signal.SIGSTOP)
            resume.start()  # never leave it stopped, whatever happens here
            with api.client() as client:
                t0 = time.monotonic()
                r = client.post(f"/projects/{project}/runs", json={"budget": 2})
                took = time.monotonic() - t0
                assert r.status_code == 503, f"{r.status_code} {r.text}\n{api.tail()}"
                assert "broker" in r.json()["detail"]
                assert took < 15, f"the request waited {took:.0f} s on the stalled broker"
                os.kill(broker.proc.pid, signal.SIGCONT)
                runs = client.get(f"/projects/{project}/runs").json()
                assert [run["status"] for run in runs] == ["failed"]
    finally:
        resume.cancel()
        os.kill(broker.proc.pid, signal.SIGCONT)
        broker.stop()
