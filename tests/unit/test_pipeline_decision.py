"""What a pipeline run does next (`labelloop.pipelines.decision`), decided once: wait,
skip, stop with the reason, or continue with the run's resolved parameters; and the
chain state the stage tasks hand on (SQLite, the in-memory broker, no worker)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from labelloop.db.models import ModelVersion, PipelineRun, WebhookEvent
from labelloop.pipelines import runs as pipelines
from labelloop.pipelines.decision import Continue, Skip, Stop, Wait, end_run, next_step
from labelloop.pipelines.dispatch import get_dispatcher
from labelloop.pipelines.runs import PipelineParams, PipelineStatus, request_pipeline
from labelloop.pipelines.state import ChainState
from labelloop.pipelines.triggers import update_triggers
from labelloop.projects import create_project, get_project
from labelloop.registry import find_model
from tests.factories import TINY_RECIPE, trained_project


@pytest.fixture
def dispatcher(ctx):
    d = get_dispatcher(ctx.settings)
    d.app.control.purge()  # the in-memory queues are per process
    yield d
    d.app.control.purge()


def _sent(dispatcher) -> list[dict]:
    """The first-task messages waiting in the in-memory broker (taken off it)."""
    out = []
    with dispatcher.app.connection_for_read() as conn:
        q = conn.SimpleQueue("io")
        while True:
            try:
                msg = q.get(timeout=0.2)
            except q.Empty:
                break
            msg.ack()
            out.append(msg.decode()[0][0])
        q.close()
    return out


def _start(ctx, project: str, **params):
    req = request_pipeline(ctx, project, trigger="cli", params=PipelineParams(**params))
    return req.run_id, req.task_id


def test_the_chain_state_is_typed_json_without_unset_fields():
    st = ChainState(project="cells", dataset_version_id=3)
    assert st.message() == {"project": "cells", "dataset_version_id": 3}
    later = ChainState.load(st.message()).but(model_version_id=5, dataset_version_id=None)
    assert later.message() == {"project": "cells", "model_version_id": 5}
    with pytest.raises(ValidationError):
        ChainState.load({"project": "cells", "model_version": 5})  # a typo is refused
    with pytest.raises(ValueError, match="names no project"):
        _ = ChainState(pipeline_run_id=1).project_name


def test_nothing_labelled_stops_with_the_reason(ctx, dispatcher):
    with ctx.db.session() as s:
        create_project(s, "empty", "segmentation", ["RBC"])
    run_id, task_id = _start(ctx, "empty")
    step = next_step(ctx, dispatcher, run_id, task_id)
    assert isinstance(step, Stop) and step.reason.startswith("nothing to learn from")
    info = pipelines.run_info(ctx, run_id)
    assert info["status"] == "stopped" and info["message"] == step.reason
    assert info["state"] == {
        "pipeline_run_id": run_id,
        "project": "empty",
        "webhook_events": 0,
        "synced": {"labelstudio": []},
    }


def test_new_data_continues_with_the_resolved_parameters(ctx, dispatcher, tmp_path):
    trained_project(ctx, "cells", tmp_path, train=False)
    with ctx.db.session() as s:
        update_triggers(get_project(s, "cells"), {"budget": 7})
    run_id, task_id = _start(ctx, "cells", strategy="random", recipe={"epochs": 2})
    step = next_step(ctx, dispatcher, run_id, task_id)
    assert isinstance(step, Continue)
    assert (step.params.budget, step.params.strategy, step.params.push_to) == (7, "random", "file")
    assert step.params.recipe == {"epochs": 2} and step.params.recipe_requested
    assert step.state.dataset_version == 1 and step.state.dataset_version_created
    assert step.state.synced == {"labelstudio": []}
    info = pipelines.run_info(ctx, run_id)
    assert (info["status"], info["stage"]) == ("running", "freeze")  # the worker goes on


def test_unchanged_trained_data_stops_unless_another_recipe_is_asked_for(ctx, dispatcher, tmp_path):
    dv, mv = trained_project(ctx, "cells", tmp_path)
    run_id, task_id = _start(ctx, "cells")
    step = next_step(ctx, dispatcher, run_id, task_id)
    assert isinstance(step, Stop) and step.state.model_version_id == mv
    assert step.reason == (
        f"no new annotations since dataset version 1, which is already trained (model version {mv})"
    )
    assert pipelines.run_info(ctx, run_id)["model_version_id"] == mv
    # The same recipe asked for explicitly: still nothing to do; another recipe: train.
    run_id, task_id = _start(ctx, "cells", recipe=TINY_RECIPE)
    assert isinstance(next_step(ctx, dispatcher, run_id, task_id), Stop)
    run_id, task_id = _start(ctx, "cells", recipe={**TINY_RECIPE, "epochs": 2})
    step = next_step(ctx, dispatcher, run_id, task_id)
    assert isinstance(step, Continue) and step.state.dataset_version_id == dv


def test_a_debounced_run_waits_and_an_ended_one_is_skipped(ctx, dispatcher):
    with ctx.db.session() as s:
        create_project(s, "cells", "segmentation", ["RBC"])
    req = request_pipeline(ctx, "cells", trigger="webhook", delay_s=30)
    step = next_step(ctx, dispatcher, req.run_id, req.task_id)
    assert isinstance(step, Wait) and 25 < step.seconds <= 30
    pipelines.cancel(ctx, req.run_id)
    step = next_step(ctx, dispatcher, req.run_id, req.task_id)
    assert isinstance(step, Skip) and "cancelled" in step.reason


def test_ending_a_run_starts_the_follow_up_its_events_call_for(ctx, dispatcher):
    with ctx.db.session() as s:
        project, _ = create_project(s, "cells", "segmentation", ["RBC"])
        update_triggers(project, {"min_annotations": 2, "debounce_s": 0})
        project_id = project.id
    run_id, task_id = _start(ctx, "cells")
    pipelines.begin(ctx, run_id, task_id)
    with ctx.db.session() as s:  # annotations arrive while the run works
        s.add_all(
            WebhookEvent(project_id=project_id, action="ANNOTATION_CREATED", annotations=1)
            for _ in range(2)
        )
    state = ChainState(pipeline_run_id=run_id, project="cells", round_id=4)
    end_run(ctx, dispatcher, state, PipelineStatus.succeeded, message="done")
    info = pipelines.run_info(ctx, run_id)
    assert (info["status"], info["message"], info["state"]["round_id"]) == ("succeeded", "done", 4)
    with ctx.db.session() as s:
        nxt = s.scalar(select(PipelineRun).where(PipelineRun.active_project_id == project_id))
        assert nxt.trigger == "webhook" and nxt.status == "queued"
    assert _sent(dispatcher) == [{"pipeline_run_id": nxt.id}]
    # Ending it again changes nothing and queues nothing more.
    end_run(ctx, dispatcher, state, PipelineStatus.failed)
    assert pipelines.run_info(ctx, run_id)["status"] == "succeeded" and _sent(dispatcher) == []


def test_the_default_model_is_production_else_the_newest(ctx, tmp_path):
    from labelloop.runs import request_run

    dv, first = trained_project(ctx, "cells", tmp_path)
    other_run = request_run(ctx, dv, overrides={**TINY_RECIPE, "epochs": 2}).run_id
    with ctx.db.session() as s:
        pid = get_project(s, "cells").id
        prod = s.get(ModelVersion, first)
        assert prod.stage == "production" and find_model(s, pid) == first
        newer = ModelVersion(
            project_id=pid,
            name="cells-m2",
            training_run_id=other_run,
            dataset_version_id=dv,
            artifact_key=prod.artifact_key,
            sha256=prod.sha256,
            recipe=prod.recipe,
        )
        s.add(newer)
        s.flush()
        assert find_model(s, pid) == first  # production wins over a newer candidate
        prod.stage = "archived"
        s.flush()
        assert find_model(s, pid) == newer.id  # no production: the newest
        assert find_model(s, None, "cells-m2") == find_model(s, pid, str(newer.id)) == newer.id
        assert find_model(s, pid, "nope") is None
