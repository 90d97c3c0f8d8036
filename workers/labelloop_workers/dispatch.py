"""The Celery dispatcher (entry point `labelloop.dispatchers: celery`): how the API, the
CLI and the triggers hand a pipeline run to the workers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from celery import Celery

from labelloop.config import Settings

_log = logging.getLogger(__name__)
FIRST_TASK = "labelloop.pipeline"


class CeleryDispatcher:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def app(self) -> Celery:
        from celery import current_app

        from labelloop_workers.app import make_app

        current = current_app._get_current_object()
        if current.main == "labelloop" and current.conf.broker_url == self.settings.broker_url:
            return current  # inside a worker (or the embedded one): reuse its connections
        return make_app(self.settings)

    def start_pipeline(self, run_id: int, task_id: str, countdown: float = 0.0) -> None:
        self.app.send_task(
            FIRST_TASK,
            args=({"pipeline_run_id": run_id},),
            task_id=task_id,
            countdown=countdown or None,
        )

    def revoke(self, task_id: str) -> None:
        """Best effort: the run is already marked cancelled in the database, which every
        task checks first; revoking only spares a worker from picking a queued task up."""
        try:
            self.app.control.revoke(task_id)
        except Exception as exc:  # the broadcast is an optimisation, never a requirement
            _log.warning("could not revoke task %s: %s", task_id, exc)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """With the in-process broker (embedded), run an in-process worker meanwhile."""
        if not self.settings.embedded:
            yield
            return
        from labelloop_workers.embedded import embedded_worker

        app = self.app
        app.set_current()
        app.set_default()
        with embedded_worker(app):
            yield
