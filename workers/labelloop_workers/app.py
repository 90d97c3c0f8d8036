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

# Longer than the longest training: Redis redelivers unacked tasks after this.
VISIBILITY_TIMEOUT_S = 12 * 3600


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery(
        "labelloop",
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=["labelloop_workers.tasks"],
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
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
    )
    return app


app = make_app()
