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
        if (
            current.main == "labelloop"
            and current.conf.broker_url == self.settings.broker_url
            and (self.settings.embedded or current.current_worker_task is not None)
        ):
            return current  # inside a worker (or the embedded one): reuse its connections
        app = make_app(self.settings)
        # A sender (the API, the CLI) must not hang on a stalled broker: every socket of
        # its broker and result-backend connections gives up after the publish timeout.
        timeout = self.settings.publish_timeout_s
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        app.conf.redis_socket_timeout = timeout
        app.conf.redis_socket_connect_timeout = timeout
        return app

    def start_pipeline(self, run_id: int, task_id: str, countdown: float = 0.0) -> None:
        """Send the run's first task; one reconnection at most, so a broker that is down
        or stalled fails this within about twice the publish timeout. Nobody waits on the
        task's result (the run's state is in the database), so the send does not subscribe
        to it on the result backend, which would wait out the backend's own retries."""
        self.app.send_task(
            FIRST_TASK,
            args=({"pipeline_run_id": run_id},),
            task_id=task_id,
            countdown=countdown or None,
            ignore_result=True,
            retry=True,
            retry_policy={
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": 0.5,
            },
        )

    def revoke(self, task_id: str) -> None:
        """Best effort: the run is already marked cancelled in the database, which every
        task checks first; revoking only spares a worker from picking a queued task up."""
        try:
            self.app.control.revoke(task_id)
        except Exception as exc:  # the broadcast is an optimisation, never a requirement
            _log.warning("could not revoke task %s: %s", task_id, exc)

    def warm(self) -> None:
        """Build the app and open a producer connection now, so the first request that
        enqueues a run does not pay for it (about half a second)."""
        try:
            with self.app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
                for queue in self.app.amqp.queues.values():
                    queue.bind(producer.channel).declare()
        except Exception as exc:  # the broker may come up later; sending retries then
            _log.warning("broker not reachable yet (%s); the first run will connect", exc)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """With the in-process broker (embedded), run an in-process worker meanwhile;
        with a real one, warm the connection."""
        if not self.settings.embedded:
            self.warm()
            yield
            return
        from labelloop_workers.embedded import embedded_worker

        app = self.app
        app.set_current()
        app.set_default()
        with embedded_worker(app):
            yield
