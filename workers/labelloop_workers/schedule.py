"""Celery beat: the nightly pipeline for every project.

Each entry carries `expires`, so a beat that was down (or a backlog) never fires a pile of
stale nightly runs at once."""

from __future__ import annotations

from celery.schedules import crontab

from labelloop.config import Settings

NIGHTLY_EXPIRES_S = 6 * 3600


def _crontab(expr: str) -> crontab:
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"nightly_cron must have 5 fields (m h dom mon dow), got {expr!r}")
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def beat_schedule(settings: Settings) -> dict:
    return {
        "nightly-all-projects": {
            "task": "labelloop.nightly",
            "schedule": _crontab(settings.nightly_cron),
            "options": {"expires": NIGHTLY_EXPIRES_S, "queue": "cpu"},
        }
    }
