"""Orchestration: the loop as Celery chains, and the tasks that run a pipeline run.

`round_pipeline` is the whole chain, (ingest ->) freeze -> train -> score -> select ->
push, for `labelloop pipeline run` and the demo. A pipeline run (labelloop.pipelines.runs)
is requested by `trigger` (beat), the API, the CLI or a webhook, and starts with the
`labelloop.pipeline` task: `labelloop.pipelines.decision.next_step` begins it, syncs,
freezes and decides; unless it stops there, the task sends `after_freeze(...)`, which
ends with `labelloop.pipeline_finish`. `sweep` is beat's housekeeping.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from celery import chain, shared_task
from celery.canvas import Signature
from celery.exceptions import Ignore

from labelloop.config import get_settings
from labelloop.context import get_context
from labelloop.pipelines import decision
from labelloop.pipelines.dispatch import launch
from labelloop.pipelines.runs import (
    PipelineParams,
    PipelineStatus,
    RunParams,
    request_pipeline,
    set_task,
)
from labelloop.pipelines.state import ChainState
from labelloop.selection import default_strategy, get_strategy
from labelloop_workers import stages
from labelloop_workers.stages import RETRY, RETRY_RACES, Message, StageTask, dispatcher, enter

_log = logging.getLogger(__name__)


# -- chains ---------------------------------------------------------------------------


def round_pipeline(
    project: str,
    *,
    budget: int,
    sources: list[dict] | None = None,
    strategy: str | None = None,
    target: str = "file",
    out_dir: str | None = None,
    overrides: dict | None = None,
    round_model: str = "production",
) -> Signature:
    """`sources`: kwargs for each ingest (path, fmt, ...), ingested in order before freezing.
    `round_model`: production (default) or candidate, the model that scores the round.
    Without `strategy`, the project's kind names it (`labelloop.kinds`)."""
    strategy = strategy or default_strategy(get_context(), project)
    get_strategy(strategy)  # a typo fails here, before any training
    state = ChainState(project=project).message()
    steps: list[Signature] = [stages.ingest.s(**src) for src in sources or []]
    steps.append(stages.freeze.s())
    steps[0] = steps[0].clone(args=(state,))
    steps += _after_freeze_steps(budget, strategy, target, out_dir, overrides, round_model)
    return chain(*steps)


def _after_freeze_steps(
    budget: int,
    strategy: str,
    target: str,
    out_dir: str | None,
    overrides: dict | None,
    round_model: str = "production",
) -> list[Signature]:
    # Embeddings only when the strategy reads them (diversity): they cost a forward pass.
    embed = get_strategy(strategy).needs_embeddings
    control = get_settings().selection_control_fraction
    return [
        stages.train.s(overrides=overrides, round_model=round_model),
        stages.score.s(embed=embed),
        stages.select.s(budget=budget, strategy=strategy, control_fraction=control),
        stages.push.s(target=target, out_dir=out_dir),
    ]


def after_freeze(state: ChainState, params: RunParams) -> Signature:
    """train -> score -> select -> push -> pipeline_finish, from a pipeline run's frozen
    dataset version, with the run's resolved parameters."""
    first, *rest = _after_freeze_steps(
        params.budget,
        params.strategy,
        params.push_to,
        None,
        params.recipe or None,
        params.round_model,
    )
    return chain(first.clone(args=(state.message(),)), *rest, finish.s())


# -- a pipeline run -------------------------------------------------------------------


@shared_task(name="labelloop.trigger", base=StageTask, **RETRY)
def trigger(
    project: str,
    trigger: str = "beat",
    scheduled_for: str | None = None,
    params: dict | None = None,
) -> dict:
    """Request a pipeline run (beat's entry point): queued, or coalesced into the active
    one; a beat slot already requested is a no-op, so a redelivered firing runs once."""
    ctx = get_context()
    req = request_pipeline(
        ctx,
        project,
        trigger=trigger,
        requested_by="beat" if trigger == "beat" else None,
        params=PipelineParams.model_validate(params or {}),
        scheduled_for=datetime.fromisoformat(scheduled_for) if scheduled_for else None,
    )
    launch(ctx, dispatcher(ctx), req)
    return {
        "pipeline_run_id": req.run_id,
        "created": req.created,
        "coalesced_into": req.coalesced_into,
        "duplicate": req.duplicate,
    }


@shared_task(name="labelloop.pipeline", bind=True, base=StageTask, **RETRY_RACES)
def run(self, state: Message) -> Message:
    """Begin the run (after its debounce quiet time), sync, freeze and stop early when
    there is nothing new to learn from (all decided by `decision.next_step`); otherwise
    hand the rest to the train -> score -> select -> push chain."""
    ctx = get_context()
    run_id = ChainState.load(state).pipeline_run_id
    step = decision.next_step(ctx, dispatcher(ctx), run_id, self.request.id)
    if isinstance(step, decision.Skip):
        _log.info("%s; nothing to do", step.reason)
        raise Ignore()
    if isinstance(step, decision.Wait):  # debounced: wake up when the quiet time is over
        task_id = str(uuid.uuid4())
        set_task(ctx, run_id, task_id)
        run.apply_async((state,), countdown=step.seconds, task_id=task_id)
        raise Ignore()
    if isinstance(step, decision.Stop):
        return step.state.but(stopped=step.reason).message()
    rest = after_freeze(step.state, step.params)
    rest.freeze()
    rest.apply_async()
    # Sent first, recorded second: a crash in between duplicates idempotent stages rather
    # than leaving the run stuck. The recorded task id makes a redelivered copy of this
    # task skip itself.
    enter(self, step.state, "train", task_id=rest.tasks[0].id)
    return step.state.but(continued=True).message()


@shared_task(name="labelloop.pipeline_finish", base=StageTask, **RETRY)
def finish(state: Message) -> Message:
    ctx = get_context()
    decision.end_run(ctx, dispatcher(ctx), ChainState.load(state), PipelineStatus.succeeded)
    return state


@shared_task(name="labelloop.sweep", base=StageTask, **RETRY)
def sweep() -> dict:
    """Beat's safety net: end pipeline runs that lost every sign of life (their messages
    were lost), and start the retrain that webhook events call for when no run was there
    to pick them up."""
    ctx = get_context()
    return decision.sweep(ctx, dispatcher(ctx))
