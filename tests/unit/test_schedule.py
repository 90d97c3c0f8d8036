"""Beat's schedule from the database: an entry per active project with its own crontab,
every entry expiring, and a firing that carries its slot so it runs once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab
from sqlalchemy import select

from labelloop.db.models import PipelineRun
from labelloop.pipelines.triggers import update_triggers
from labelloop.projects import create_project, get_project
from labelloop_workers.schedule import (
    ENTRY_PREFIX,
    NIGHTLY_EXPIRES_S,
    ProjectScheduler,
    expires_for,
    project_crontab,
    project_entries,
)


@pytest.fixture
def app(ctx):
    from labelloop_workers.app import make_app

    app = make_app(ctx.settings)
    app.set_current()
    app.control.purge()
    yield app
    app.control.purge()


@pytest.fixture
def projects(ctx):
    with ctx.db.session() as s:
        for name in ("nightly", "hourly", "paused"):
            create_project(s, name, "segmentation", ["RBC"])
        update_triggers(get_project(s, "hourly"), {"cron": "15 * * * *"})
        update_triggers(get_project(s, "paused"), {"active": False})


def test_each_active_project_gets_its_crontab_and_every_entry_expires(ctx, projects):
    entries = project_entries(ctx)
    assert set(entries) == {f"{ENTRY_PREFIX}nightly", f"{ENTRY_PREFIX}hourly"}
    nightly, hourly = entries[f"{ENTRY_PREFIX}nightly"], entries[f"{ENTRY_PREFIX}hourly"]
    assert nightly["schedule"] == crontab(minute="0", hour="2")  # the global nightly_cron
    assert hourly["schedule"] == crontab(minute="15")
    assert nightly["task"] == "labelloop.trigger" and nightly["args"] == ("nightly",)
    assert nightly["options"]["expires"] == NIGHTLY_EXPIRES_S
    assert hourly["options"]["expires"] < 3600  # never longer than the gap to the next


def test_expiry_follows_the_crontab():
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert expires_for(project_crontab("*/15 * * * *"), now) == 899
    assert expires_for(project_crontab("0 3 * * *"), now) == NIGHTLY_EXPIRES_S


def test_the_scheduler_follows_the_database_and_fires_once_per_slot(ctx, app, projects, tmp_path):
    from labelloop_workers import pipeline

    beat = ProjectScheduler(app=app, schedule_filename=str(tmp_path / "beat"), lazy=False)
    try:
        names = set(beat.schedule)
        assert {f"{ENTRY_PREFIX}nightly", f"{ENTRY_PREFIX}hourly", "labelloop:sweep"} <= names
        assert f"{ENTRY_PREFIX}paused" not in names
        with ctx.db.session() as s:  # paused -> active, hourly -> paused: picked up
            update_triggers(get_project(s, "paused"), {"active": True})
            update_triggers(get_project(s, "hourly"), {"active": False})
        beat.refresh(force=True)
        assert f"{ENTRY_PREFIX}paused" in beat.schedule
        assert f"{ENTRY_PREFIX}hourly" not in beat.schedule

        entry = beat.schedule[f"{ENTRY_PREFIX}nightly"]
        entry.last_run_at = datetime.now(UTC) - timedelta(days=2)  # overdue
        beat.apply_async(entry)
        with app.connection_for_read() as conn:
            q = conn.SimpleQueue("cpu")
            msg = q.get(timeout=2)
            msg.ack()
            q.close()
        assert msg.headers["task"] == "labelloop.trigger" and msg.headers["expires"]
        args, kwargs, _ = msg.decode()
        assert args == ["nightly"] and kwargs["trigger"] == "beat"
        slot = datetime.fromisoformat(kwargs["scheduled_for"])
        assert slot.second == 0 and slot.microsecond == 0
    finally:
        beat.close()

    # The task the message asks for, run here: one pipeline run per slot, however often
    # the firing is delivered.
    first = pipeline.trigger.apply(args=args, kwargs=kwargs).get()
    again = pipeline.trigger.apply(args=args, kwargs=kwargs).get()
    assert first["created"] and again["duplicate"]
    assert again["pipeline_run_id"] == first["pipeline_run_id"]
    with ctx.db.session() as s:
        runs = list(s.scalars(select(PipelineRun)))
    assert len(runs) == 1 and runs[0].trigger == "beat" and runs[0].requested_by == "beat"
