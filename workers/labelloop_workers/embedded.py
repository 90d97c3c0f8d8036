"""An in-process worker on the in-memory broker: the demo and single-machine use run the
same task code as production, through a real Celery worker, with nothing to install."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery.contrib.testing.worker import start_worker

from labelloop_workers.routes import QUEUES


@contextmanager
def embedded_worker(app: Celery) -> Iterator[None]:
    if not app.conf.broker_url.startswith("memory://"):
        raise RuntimeError("the embedded worker needs the in-memory broker (memory://)")
    with start_worker(
        app,
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        queues=list(QUEUES),
        hostname="embedded@labelloop",
        loglevel="WARNING",
        shutdown_timeout=30,
    ):
        yield
