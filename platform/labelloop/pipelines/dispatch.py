"""How the library hands a pipeline run to the workers, without importing them.

The API, the CLI and the beat/webhook triggers decide *whether* to run (labelloop.pipelines.runs);
a dispatcher sends the run's first task to the broker. The workers package provides the
Celery one through the `labelloop.dispatchers` entry-point group, the same way it adds
its CLI commands, so `labelloop` never imports `labelloop_workers`.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import Protocol

from labelloop.config import Settings
from labelloop.context import Context
from labelloop.errors import ConfigError, ExternalServiceError
from labelloop.outages import redact
from labelloop.pipelines.runs import PipelineRequest, PipelineStatus, finish

_log = logging.getLogger(__name__)
GROUP = "labelloop.dispatchers"


class Dispatcher(Protocol):
    def start_pipeline(self, run_id: int, task_id: str, countdown: float = 0.0) -> None:
        """Enqueue the first task of pipeline run `run_id` under the given task id."""

    def revoke(self, task_id: str) -> None:
        """Stop a queued task from running (a running one stops at its next check)."""

    def serving(self) -> AbstractContextManager[None]:
        """Whatever must run for dispatched work to happen in this process (an in-process
        worker when the broker is in-process); a no-op with a real broker."""


def get_dispatcher(settings: Settings, name: str = "celery") -> Dispatcher:
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()(settings)
    raise ConfigError(
        f"no {name!r} dispatcher is installed (entry point group {GROUP}); install the "
        "labelloop distribution with its workers package"
    )


def launch(ctx: Context, dispatcher: Dispatcher, req: PipelineRequest) -> None:
    """Send a newly queued run to the workers. A broker that cannot take it marks the run
    failed (so it does not block the project) and raises ExternalServiceError."""
    if not req.created or req.task_id is None:
        return
    try:
        dispatcher.start_pipeline(req.run_id, req.task_id, countdown=req.countdown)
    except Exception as exc:
        _log.exception("could not enqueue pipeline run %s", req.run_id)
        finish(ctx, req.run_id, PipelineStatus.failed, message=f"could not enqueue: {exc}")
        raise ExternalServiceError(
            f"the broker at {redact(ctx.settings.broker_url)} did not accept pipeline run "
            f"{req.run_id} ({exc}); the run is marked failed: try again when the broker is up"
        ) from exc
