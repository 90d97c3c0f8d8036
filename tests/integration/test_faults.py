"""Workers that survive faults: real `celery worker` processes, Redis and PostgreSQL.

- a worker killed (-9) mid-training: another worker gets the task back, resumes from the
  last checkpoint, and the pipeline ends with exactly one model version;
- Redis killed and restarted while tasks are queued (and again mid-training): nothing is
  lost, the pipeline completes (a private redis-server with an append-only file);
- the PostgreSQL connection dropped in the middle of a stage's transaction: the stage is
  retried and no half-written rows remain;
- a stage that exhausts its retries: its pipeline run ends failed with the error, and
  the project is free for the next run.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.db.models import (
    DatasetVersion,
    Image,
    ModelVersion,
    PipelineRun,
    SourceItem,
    TrainingRun,
)
from labelloop.ingest import ingest_path
from labelloop.pipelines.dispatch import launch
from labelloop.pipelines.runs import PipelineParams, request_pipeline, run_info
from labelloop.pipelines.triggers import link_labelstudio
from labelloop.projects import create_project
from labelloop_workers.dispatch import CeleryDispatcher
from tests.factories import png, small_export
from tests.integration.services import PrivateRedis, free_port, redis_server_binary, wait_for
from tests.support import require

pytestmark = pytest.mark.integration

FINAL = ("succeeded", "stopped", "failed", "cancelled")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _seed(ctx: Context, project: str, folder: Path, labelled: int = 8, pool: int = 3) -> None:
    with ctx.db.session() as s:
        create_project(s, project, "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, project, small_export(folder / "src", n=labelled))
    (folder / "pool").mkdir()
    for i in range(pool):
        (folder / "pool" / f"p{i}.png").write_bytes(png(seed=500 + i))
    ingest_path(ctx, project, folder / "pool")


def _trigger(ctx: Context, project: str, recipe: dict, budget: int = 2) -> int:
    req = request_pipeline(
        ctx, project, trigger="cli", params=PipelineParams(recipe=recipe, budget=budget)
    )
    assert req.created
    launch(ctx, CeleryDispatcher(ctx.settings), req)
    return req.run_id


def _finished(ctx: Context, run_id: int, timeout: float) -> dict:
    return wait_for(
        lambda: (r := run_info(ctx, run_id))["status"] in FINAL and r,
        timeout,
        f"pipeline run {run_id} to end",
        every=0.5,
    )


def _count(ctx: Context, model, *where) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _project_id(ctx: Context, project: str) -> int:
    from labelloop.db.models import Project

    with ctx.db.session() as s:
        return s.scalar(select(Project.id).where(Project.name == project))


def _first_checkpoint(ctx: Context, project_id: int) -> TrainingRun:
    """Wait for the project's training to mirror a checkpoint (epoch >= 1)."""

    def checkpointed():
        with ctx.db.session() as s:
            return s.scalar(
                select(TrainingRun).where(
                    TrainingRun.project_id == project_id, TrainingRun.checkpoint_epoch >= 1
                )
            )

    return wait_for(checkpointed, 240, "a checkpoint at epoch >= 1", every=0.2)


def test_killed_worker_mid_training_is_redelivered_and_resumes(
    service_env, service_settings, start_worker, celery_app, tmp_path
):
    ctx = Context(service_settings)
    set_context(ctx)
    project = _name("kill9")
    _seed(ctx, project, tmp_path)
    blobs = str(Path(service_env["LABELLOOP_DATA_DIR"]) / "blobs")
    fast = {
        "LABELLOOP_VISIBILITY_TIMEOUT_S": "15",
        "LABELLOOP_TRAINING_LOCK_TTL_S": "6",
        "LABELLOOP_LOCK_RETRY_S": "2",
        "LABELLOOP_BLOB_URL": blobs,
    }
    start_worker("io,cpu", extra_env=fast)
    # Two training workers on different "hosts": their run folders differ, so the one that
    # takes over can only resume from the checkpoint mirrored to the blob store.
    gpu = [
        start_worker("gpu", extra_env={**fast, "LABELLOOP_DATA_DIR": str(tmp_path / host)})
        for host in ("host-a", "host-b")
    ]
    started = time.monotonic()
    run_id = _trigger(ctx, project, {"epochs": 4, "batch_size": 2, "image_size": 64})
    pid = _project_id(ctx, project)
    tr = _first_checkpoint(ctx, pid)
    assert tr.checkpoint_epoch < 4, "training finished before the worker could be killed"
    by_node = {w.name: w for w in gpu}
    victim = by_node[tr.worker.split("@")[0]]
    survivor = next(w for w in gpu if w is not victim)
    victim.kill()  # SIGKILL: no goodbye, no ack, the lock stops being renewed
    killed_at = tr.checkpoint_epoch

    run = _finished(ctx, run_id, 300)
    assert run["status"] == "succeeded", run
    with ctx.db.session() as s:
        (mv,) = s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid))
        (final,) = s.scalars(select(TrainingRun).where(TrainingRun.project_id == pid))
    assert final.id == tr.id and final.status == "succeeded" and final.attempts >= 2
    assert mv.metrics["resumed"] is True and mv.metrics["epochs"] == 4
    assert f"labelloop.train[{tr.task_id}] succeeded" in survivor.tail(10**6)
    assert (tmp_path / ("host-b" if survivor is gpu[1] else "host-a") / "runs").is_dir()
    print(
        f"\nkill -9 at epoch {killed_at}: resumed on the other worker, attempts "
        f"{final.attempts}, 1 model version, pipeline done in {time.monotonic() - started:.0f} s"
    )


def test_sigterm_mid_training_hands_the_task_back_quietly(
    service_env, service_settings, start_worker, celery_app, tmp_path
):
    """A deploy's SIGTERM to a training worker: the training stops after its current
    step, its message goes straight back to the queue, another worker resumes from the
    checkpoint, and nobody sees the run failed or a CRITICAL line on the way."""
    import signal

    ctx = Context(service_settings)
    set_context(ctx)
    project = _name("sigterm")
    _seed(ctx, project, tmp_path)
    blobs = str(Path(service_env["LABELLOOP_DATA_DIR"]) / "blobs")
    fast = {"LABELLOOP_LOCK_RETRY_S": "2", "LABELLOOP_BLOB_URL": blobs}
    start_worker("io,cpu", extra_env=fast)
    victim = start_worker("gpu", extra_env={**fast, "LABELLOOP_DATA_DIR": str(tmp_path / "a")})
    run_id = _trigger(ctx, project, {"epochs": 6, "batch_size": 2, "image_size": 64})
    pid = _project_id(ctx, project)
    tr = _first_checkpoint(ctx, pid)
    assert tr.checkpoint_epoch < 6, "training finished before the worker could be stopped"
    victim.proc.send_signal(signal.SIGTERM)  # the main process only, as a deploy does
    seen: set[str] = set()

    def exited():
        with ctx.db.session() as s:
            seen.add(s.get(PipelineRun, run_id).status)
            seen.add("training " + s.get(TrainingRun, tr.id).status)
        return victim.proc.poll() is not None

    wait_for(exited, 120, "the SIGTERMed worker to exit", every=0.1)
    stopped_at = tr.checkpoint_epoch
    start_worker("gpu", extra_env={**fast, "LABELLOOP_DATA_DIR": str(tmp_path / "b")})

    def finished():
        with ctx.db.session() as s:
            seen.add(s.get(PipelineRun, run_id).status)
            seen.add("training " + s.get(TrainingRun, tr.id).status)
        return run_info(ctx, run_id)["status"] in FINAL

    wait_for(finished, 300, f"pipeline run {run_id} to end", every=0.2)
    log = victim.tail(10**6)
    assert "CRITICAL" not in log and "Traceback" not in log, log[-4000:]
    assert "failed" not in seen and "training failed" not in seen, seen
    assert run_info(ctx, run_id)["status"] == "succeeded"
    with ctx.db.session() as s:
        (mv,) = s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid))
        final = s.get(TrainingRun, tr.id)
    assert final.status == "succeeded" and final.attempts >= 2
    assert mv.metrics["resumed"] is True and mv.metrics["epochs"] == 6
    print(f"\nSIGTERM after epoch {stopped_at}: handed back, resumed elsewhere, states {seen}")


def test_redis_restart_loses_no_queued_task(pg_url, service_env, start_worker, tmp_path):
    require(redis_server_binary() is not None, "redis-server is not installed")
    redis_srv = PrivateRedis(tmp_path / "redis")
    redis_srv.start()
    try:
        env = {
            **service_env,
            "LABELLOOP_BROKER_URL": redis_srv.url,
            "LABELLOOP_RESULT_BACKEND": redis_srv.url,
            "LABELLOOP_REDIS_URL": redis_srv.url,
            "LABELLOOP_VISIBILITY_TIMEOUT_S": "20",
        }
        settings = Settings(**{k.removeprefix("LABELLOOP_").lower(): v for k, v in env.items()})
        ctx = Context(settings)
        set_context(ctx)
        project = _name("redis")
        _seed(ctx, project, tmp_path)
        started = time.monotonic()
        run_id = _trigger(ctx, project, {"epochs": 3, "batch_size": 2, "image_size": 64})
        import redis

        assert redis.Redis.from_url(redis_srv.url).llen("io") == 1  # queued, no worker yet
        redis_srv.restart()  # kill -9 and start again on the same files
        assert redis.Redis.from_url(redis_srv.url).llen("io") == 1  # kept by the AOF

        start_worker("io,cpu,gpu", extra_env=env)
        pid = _project_id(ctx, project)
        wait_for(
            lambda: _count(
                ctx, TrainingRun, TrainingRun.project_id == pid, TrainingRun.status == "running"
            ),
            180,
            "training to start",
        )
        redis_srv.restart()  # again, while the worker trains and the rest is still to come
        run = _finished(ctx, run_id, 300)
        assert run["status"] == "succeeded", run
        assert _count(ctx, ModelVersion, ModelVersion.project_id == pid) == 1
        assert _count(ctx, TrainingRun, TrainingRun.project_id == pid) == 1
        assert run["state"]["push_id"] is not None
        print(
            f"\nRedis killed and restarted {redis_srv.restarts}x (queued, then mid-training): "
            f"pipeline completed in {time.monotonic() - started:.0f} s, 1 model version"
        )
    finally:
        redis_srv.stop()


def test_dropped_database_connection_retries_the_stage_without_half_written_rows(
    pg_url, service_env, service_settings, start_worker, celery_app, tmp_path
):
    from labelloop_workers import stages

    ctx = Context(service_settings)
    set_context(ctx)
    project = _name("pgdrop")
    with ctx.db.session() as s:
        create_project(s, project, "segmentation", ["RBC"])
    pid = _project_id(ctx, project)
    folder = tmp_path / "pool"
    folder.mkdir()
    n = 400
    for i in range(n):
        (folder / f"cell_{i}.png").write_bytes(png(64, 48, seed=20_000 + i))
    app_name = f"llfault-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        "io,cpu",
        extra_env={
            "LABELLOOP_DATABASE_URL": f"{pg_url}?application_name={app_name}",
            "LABELLOOP_DATA_DIR": str(tmp_path / "worker"),
            "LABELLOOP_BLOB_URL": str(tmp_path / "blobs"),
        },
    )
    admin = psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True)
    blobs = tmp_path / "blobs"

    def in_transaction() -> bool:
        busy = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND xact_start IS NOT NULL",
            (app_name,),
        ).fetchone()[0]
        written = sum(1 for _ in blobs.rglob("*.png")) if blobs.exists() else 0
        return busy > 0 and written >= 40

    result = stages.ingest.delay({"project": project}, path=str(folder), fmt="images")
    wait_for(in_transaction, 120, "the ingest to be half-way through its transaction", every=0.05)
    killed = admin.execute(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s) t",
        (app_name,),
    ).fetchone()[0]
    assert killed >= 1
    # The transaction died with its connection: nothing of it is in the database.
    assert _count(ctx, SourceItem, SourceItem.project_id == pid) == 0
    state = result.get(timeout=300)
    assert state["ingests"][0]["images_new"] == n
    assert _count(ctx, SourceItem, SourceItem.project_id == pid) == n
    with ctx.db.session() as s:
        images = s.scalar(
            select(func.count(func.distinct(SourceItem.image_id))).where(
                SourceItem.project_id == pid
            )
        )
        assert (
            images
            == n
            == s.scalar(
                select(func.count(Image.id)).where(
                    Image.id.in_(select(SourceItem.image_id).where(SourceItem.project_id == pid))
                )
            )
        )
    retries = [
        line
        for line in worker.tail(10**7).splitlines()
        if f"labelloop.ingest[{result.id}] retry: Retry in" in line
    ]
    # The connection died under the transaction: how psycopg words it depends on where.
    assert retries and "OperationalError" in retries[0], worker.tail(3000)
    assert any(
        why in retries[0] for why in ("terminating connection", "server closed the connection")
    ), retries[0]
    admin.close()
    print(
        f"\nPostgreSQL connection terminated mid-ingest ({killed} backend(s)): "
        f"retried, {n} rows once"
    )


def test_a_stage_that_exhausts_its_retries_fails_the_pipeline_cleanly(
    service_env, service_settings, start_worker, celery_app, tmp_path
):
    ctx = Context(service_settings)
    set_context(ctx)
    project = _name("noretry")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with ctx.db.session() as s:
        p, _ = create_project(s, project, "segmentation", ["RBC"])
        link_labelstudio(p, closed, 1)
    start_worker(
        "io,cpu,gpu",
        extra_env={"LABELLOOP_TASK_MAX_RETRIES": "2", "LABELLOOP_LABELSTUDIO_TOKEN": "t" * 40},
    )
    started = time.monotonic()
    run_id = _trigger(ctx, project, {"epochs": 1})
    run = _finished(ctx, run_id, 120)
    assert run["status"] == "failed" and run["stage"] == "sync"
    assert run["message"].startswith("pipeline failed: ExternalServiceError: Label Studio at")
    assert closed in run["message"] and "unreachable" in run["message"]
    pid = _project_id(ctx, project)
    assert _count(ctx, DatasetVersion, DatasetVersion.project_id == pid) == 0
    assert _count(ctx, TrainingRun, TrainingRun.project_id == pid) == 0
    with ctx.db.session() as s:
        assert s.get(PipelineRun, run_id).active_project_id is None
    assert request_pipeline(ctx, project, trigger="cli").created  # the project is free
    print(f"\nretries exhausted: pipeline failed cleanly after {time.monotonic() - started:.0f} s")
