"""Celery beat: a pipeline per active project on the project's own crontab.

Why a scheduler of our own: the crontab of each project is data (it lives with the
project, `labelloop project schedule`), and beat reads `beat_schedule` only when it
starts. `ProjectScheduler` is celery's PersistentScheduler whose entries are rebuilt
from the database every `REFRESH_S`: one `labelloop.trigger` entry per active project
(its crontab, else `nightly_cron`), plus the static entries of `beat_schedule`. A project
added, paused or given a new crontab is picked up within a minute, with no restart.

Every entry carries `expires`, so a beat or a worker pool that was down never fires a
pile of stale runs at once; and each firing carries its slot (`scheduled_for`), which the
database keys on, so a redelivered or doubled firing still starts one run.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from celery.beat import PersistentScheduler
from celery.schedules import crontab
from sqlalchemy import select

from labelloop.config import Settings, get_settings
from labelloop.context import Context, get_context
from labelloop.db.models import Project
from labelloop.pipelines.triggers import effective_triggers, parse_cron

NIGHTLY_EXPIRES_S = 6 * 3600
SWEEP_EVERY_MIN = 10
REFRESH_S = 60.0
ENTRY_PREFIX = "labelloop:pipeline:"
_log = logging.getLogger(__name__)


def project_crontab(expr: str) -> crontab:
    return crontab(**parse_cron(expr))


def expires_for(schedule: crontab, now: datetime | None = None) -> int:
    """At most NIGHTLY_EXPIRES_S, and never longer than the gap to the next firing (an
    every-15-minutes project must not stack firings)."""
    now = now or datetime.now(schedule.tz)
    first = _next_after(schedule, now)
    second = _next_after(schedule, first + timedelta(seconds=1))
    gap = (second - first).total_seconds()
    return int(max(30, min(NIGHTLY_EXPIRES_S, gap - 1)))


def _next_after(schedule: crontab, moment: datetime) -> datetime:
    base, delta, _ = schedule.remaining_delta(moment)
    return base + delta


def beat_schedule(settings: Settings) -> dict:
    """The static entries (the housekeeping sweep); projects are added by ProjectScheduler."""
    return {
        "labelloop:sweep": {
            "task": "labelloop.sweep",
            "schedule": crontab(minute=f"*/{SWEEP_EVERY_MIN}"),
            "options": {"expires": SWEEP_EVERY_MIN * 60 - 30, "queue": "cpu"},
        }
    }


def project_entries(ctx: Context) -> dict:
    """One beat entry per active project, from the database."""
    entries = {}
    with ctx.db.session() as s:
        projects = list(s.scalars(select(Project).order_by(Project.name)))
        for project in projects:
            try:
                trig = effective_triggers(project, ctx.settings)
                schedule = project_crontab(trig.cron)
            except Exception as exc:  # one bad project must not stop every schedule
                _log.error("project %s: no schedule (%s)", project.name, exc)
                continue
            if not trig.active:
                continue
            entries[f"{ENTRY_PREFIX}{project.name}"] = {
                "task": "labelloop.trigger",
                "schedule": schedule,
                "args": (project.name,),
                "kwargs": {"trigger": "beat"},
                "options": {"expires": expires_for(schedule), "queue": "cpu"},
            }
    return entries


class ProjectScheduler(PersistentScheduler):
    """PersistentScheduler with per-project entries rebuilt from the database."""

    refresh_s = REFRESH_S

    def __init__(self, *args, **kwargs):
        self._refreshed = float("-inf")
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        self.refresh(force=True)

    def tick(self, *args, **kwargs):
        self.refresh()
        return super().tick(*args, **kwargs)

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed < self.refresh_s:
            return
        self._refreshed = time.monotonic()
        settings = get_settings()
        try:
            wanted = {**beat_schedule(settings), **project_entries(get_context())}
        except Exception as exc:  # database down: keep the entries we have
            _log.warning("could not read project schedules (%s); keeping the current ones", exc)
            return
        self.merge_inplace(wanted)
        self._heap = None  # rebuild the heap: entries were added, removed or changed

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if entry.task == "labelloop.trigger":
            slot = self.app.now().replace(second=0, microsecond=0)
            entry.kwargs = {**(entry.kwargs or {}), "scheduled_for": slot.isoformat()}
        return super().apply_async(entry, producer, advance, **kwargs)
