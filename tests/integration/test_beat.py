"""A real `celery beat` process on the database-driven schedule: each active project's
crontab fires a pipeline run through a real worker (paused projects never fire)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import select

from labelloop.context import Context, set_context
from labelloop.db.models import PipelineRun, Project
from labelloop.pipelines.triggers import update_triggers
from labelloop.projects import create_project, get_project
from tests.integration.services import wait_for
from tests.support import REPO

pytestmark = pytest.mark.integration


def test_beat_fires_each_active_project_on_its_own_crontab(
    service_env, service_settings, start_worker, tmp_path
):
    ctx = Context(service_settings)
    set_context(ctx)
    every_minute, paused = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("beat", "paused"))
    with ctx.db.session() as s:
        for name in (every_minute, paused):
            create_project(s, name, "segmentation", ["RBC"])
        update_triggers(get_project(s, every_minute), {"cron": "* * * * *"})
        update_triggers(get_project(s, paused), {"cron": "* * * * *", "active": False})
        ids = {p.name: p.id for p in s.scalars(select(Project))}
    start_worker("io,cpu")
    log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115 - the child keeps it
    beat = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "labelloop_workers.app", "beat",
            "--schedule", str(tmp_path / "beat-schedule"), "--loglevel", "INFO",
        ],
        cwd=REPO,
        env={**os.environ, **service_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    log.close()
    try:

        def fired():
            with ctx.db.session() as s:
                return s.scalar(
                    select(PipelineRun).where(
                        PipelineRun.project_id == ids[every_minute],
                        PipelineRun.status.not_in(("queued", "running")),
                    )
                )

        run = wait_for(fired, 150, "beat to fire the every-minute project", every=1)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=30)
    beat_log = (tmp_path / "beat.log").read_text(errors="replace")
    assert "ProjectScheduler" in beat_log, beat_log[-2000:]
    assert f"labelloop:pipeline:{every_minute}" in beat_log
    assert run.trigger == "beat" and run.requested_by == "beat"
    assert run.scheduled_for is not None and run.scheduled_for.second == 0
    # A project with no labelled image yet: the run stops at once and says why.
    assert run.status == "stopped" and run.message.startswith("nothing to learn from")
    with ctx.db.session() as s:
        assert s.scalar(select(PipelineRun).where(PipelineRun.project_id == ids[paused])) is None
    assert f"labelloop:pipeline:{paused}" not in beat_log
