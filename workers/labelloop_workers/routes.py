"""The central queue table: io for sources and push, cpu for small jobs, gpu for training."""

from __future__ import annotations

from kombu import Queue

QUEUES = ("io", "cpu", "gpu")

ROUTES: dict[str, str] = {
    "labelloop.ingest": "io",
    "labelloop.freeze": "cpu",
    "labelloop.train": "gpu",
    "labelloop.score": "cpu",
    "labelloop.score_shard": "cpu",
    "labelloop.score_done": "cpu",
    "labelloop.select": "cpu",
    "labelloop.push": "io",
    # a pipeline run: trigger (beat) -> pipeline (sync Label Studio, freeze) -> train ...
    "labelloop.trigger": "cpu",
    "labelloop.pipeline": "io",
    "labelloop.pipeline_finish": "cpu",
    "labelloop.sweep": "cpu",
}


def celery_queues() -> list[Queue]:
    return [Queue(name) for name in QUEUES]


def celery_routes() -> dict[str, dict[str, str]]:
    return {task: {"queue": queue} for task, queue in ROUTES.items()}
