"""The loop as Celery chains: (ingest ->) freeze -> train -> score -> select -> push.

`round_pipeline` is the whole chain for `labelloop pipeline run` and the demo; a pipeline
run (labelloop.pipelines.runs) starts with the `labelloop.pipeline` task, which syncs and
freezes and then, unless there is nothing new to learn from, continues with
`after_freeze(..., finish=True)`."""

from __future__ import annotations

from celery import chain
from celery.canvas import Signature

from labelloop.selection import get_strategy
from labelloop_workers import tasks


def round_pipeline(
    project: str,
    *,
    budget: int,
    sources: list[dict] | None = None,
    strategy: str = "uncertainty",
    target: str = "file",
    out_dir: str | None = None,
    overrides: dict | None = None,
) -> Signature:
    """`sources`: kwargs for each ingest (path, fmt, ...), ingested in order before freezing."""
    steps: list[Signature] = []
    state = {"project": project}
    for i, src in enumerate(sources or []):
        steps.append(tasks.ingest.s(state, **src) if i == 0 else tasks.ingest.s(**src))
    steps.append(tasks.freeze.s(state) if not steps else tasks.freeze.s())
    steps += _after_freeze_steps(budget, strategy, target, out_dir, overrides)
    return chain(*steps)


def _after_freeze_steps(
    budget: int, strategy: str, target: str, out_dir: str | None, overrides: dict | None
) -> list[Signature]:
    # Embeddings only when the strategy reads them (diversity): they cost a forward pass.
    embed = strategy in ("coreset", "hybrid")
    get_strategy(strategy)  # a typo fails here, before any training
    return [
        tasks.train.s(overrides=overrides),
        tasks.score.s(embed=embed),
        tasks.select.s(budget=budget, strategy=strategy),
        tasks.push.s(target=target, out_dir=out_dir),
    ]


def after_freeze(
    state: dict,
    *,
    budget: int,
    strategy: str = "uncertainty",
    target: str = "file",
    out_dir: str | None = None,
    overrides: dict | None = None,
    finish: bool = False,
) -> Signature:
    """train -> score -> select -> push (-> pipeline_finish), starting from a freeze's state."""
    first, *rest = _after_freeze_steps(budget, strategy, target, out_dir, overrides)
    if finish:
        rest.append(tasks.pipeline_finish.s())
    return chain(first.clone(args=(state,)), *rest)
