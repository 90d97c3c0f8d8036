"""The Celery app, configured from the same Settings as the CLI.

`celery -A labelloop_workers.app worker -Q io,cpu,gpu` serves every queue; production
runs one worker per queue kind (see docs/operations.md). Tasks are idempotent (the
database's unique keys), so they ack late with prefetch 1: a worker that dies mid-task
has it redelivered instead of lost."""

from __future__ import annotations

from celery import Celery

from labelloop.config import Settings, get_settings
from labelloop_workers.routes import celery_queues, celery_routes
from labelloop_workers.schedule import beat_schedule

# The default of Settings.visibility_timeout_s: longer than the longest training, since
# Redis redelivers a task that was not acknowledged within it.
VISIBILITY_TIMEOUT_S = Settings.model_fields["visibility_timeout_s"].default


def transport_options(settings: Settings) -> dict:
    """Redis: redeliver after the visibility timeout, and look for such messages often
    enough that a killed worker's task comes back soon after it (kombu's default sweep is
    about every 100 s)."""
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery(
        "labelloop",
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=["labelloop_workers.stages", "labelloop_workers.pipeline"],
    )
    app.conf.update(
        task_queues=celery_queues(),
        task_default_queue="cpu",
        task_routes=celery_routes(),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        broker_transport_options=transport_options(settings),
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
        beat_scheduler="labelloop_workers.schedule:ProjectScheduler",
        timezone="UTC",
    )
    return app


app = make_app()
