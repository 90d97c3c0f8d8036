"""Label Studio webhook events: the payload shapes Label Studio 1.23 sends, recording,
the per-project threshold, and the debounce that makes a burst start one pipeline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from labelloop.access import check_webhook_secret, digest, secret_matches, set_webhook_secret
from labelloop.db.models import PipelineRun, WebhookEvent
from labelloop.errors import ConfigError, ExternalServiceError, InputError
from labelloop.labelstudio.webhooks import parse_event
from labelloop.pipelines import runs as pipelines
from labelloop.pipelines.runs import PipelineStatus
from labelloop.pipelines.triggers import link_labelstudio, update_triggers
from labelloop.pipelines.webhooks import (
    WiringSecret,
    follow_up,
    record_event,
    register_webhook,
    wiring_secret,
)
from labelloop.projects import create_project, get_project

LS_PROJECT = 7


def created(ann_id: int, ls_project: int = LS_PROJECT) -> dict:
    """ANNOTATION_CREATED as Label Studio posts it (payload on: annotation, task, project)."""
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": ann_id,
            "task": 100 + ann_id,
            "project": ls_project,
            "result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 2}}],
            "was_cancelled": False,
            "completed_by": 1,
        },
        "task": {"id": 100 + ann_id, "data": {"image": "/data/upload/1/a.png"}},
        "project": {"id": ls_project, "title": "smears"},
    }


@pytest.fixture
def project(ctx):
    with ctx.db.session() as s:
        p, _ = create_project(s, "cells", "detection", ["RBC", "WBC"])
        link_labelstudio(p, "http://ls:8080/", LS_PROJECT)
        update_triggers(p, {"min_annotations": 5, "debounce_s": 30})
    return "cells"


def test_every_tracked_payload_shape_parses():
    one = parse_event(created(11))
    assert (one.action, one.ls_project, one.annotation_ids) == ("ANNOTATION_CREATED", 7, [11])
    updated = parse_event({**created(11), "action": "ANNOTATION_UPDATED"})
    assert updated.action == "ANNOTATION_UPDATED" and updated.annotation_ids == [11]
    bulk = parse_event(
        {
            "action": "ANNOTATIONS_CREATED",
            "annotation": [{"id": 1, "project": 7}, {"id": 2, "project": 7}],
            "task": [{"id": 5}, {"id": 6}],
            "project": {"id": 7},
        }
    )
    assert bulk.annotation_ids == [1, 2]
    deleted = parse_event(
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 3}], "project": {"id": 7}}
    )
    assert (deleted.action, deleted.annotation_ids, deleted.ls_project) == (
        "ANNOTATIONS_DELETED",
        [3],
        7,
    )
    # Untracked actions are acknowledged, not recorded.
    assert parse_event({"action": "TASKS_CREATED", "tasks": [{"id": 1}]}) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "no 'action'"),
        ({"action": "ANNOTATION_CREATED"}, "has no 'annotation'.*with its payload"),
        (
            {"action": "ANNOTATIONS_DELETED", "annotations": [{}]},
            r"annotations\[0\] has no integer",
        ),
        ({**created(1), "project": {"id": "7"}}, "not an integer"),
    ],
)
def test_malformed_events_say_what_is_missing(payload, message):
    with pytest.raises(InputError, match=message):
        parse_event(payload)


def test_secret_comparison():
    assert secret_matches("s3cret", "s3cret")
    assert not secret_matches("s3cret", "s3cre")
    assert not secret_matches("s3cret", None)
    assert not secret_matches("", "")  # an unset secret accepts nothing


def _events(ctx) -> list[tuple[str, int | None]]:
    with ctx.db.session() as s:
        return list(
            s.execute(
                select(WebhookEvent.action, WebhookEvent.pipeline_run_id).order_by(WebhookEvent.id)
            ).all()
        )


def test_a_burst_of_fifty_annotations_queues_one_debounced_pipeline(ctx, project):
    outcomes = [record_event(ctx, project, parse_event(created(i))) for i in range(50)]
    assert [o.status for o in outcomes[:4]] == ["pending"] * 4
    assert [o.pending_annotations for o in outcomes[:4]] == [1, 2, 3, 4]
    fifth = outcomes[4]
    assert fifth.status == "triggered" and fifth.request.created
    assert fifth.request.countdown == 30
    assert {o.status for o in outcomes[5:]} == {"joined"}
    assert {o.pipeline_run_id for o in outcomes[4:]} == {fifth.request.run_id}
    assert [o.request for o in outcomes if o.request] == [fifth.request]
    with ctx.db.session() as s:
        runs = list(s.scalars(select(PipelineRun)))
        assert len(runs) == 1 and runs[0].trigger == "webhook" and runs[0].status == "queued"
        # Each joining event pushed the start back: 30 s after the last one.
        start = pipelines.as_utc(runs[0].not_before)
        assert start - pipelines.as_utc(runs[0].created_at) < timedelta(seconds=31)
    assert {run for _, run in _events(ctx)} == {fifth.request.run_id}
    assert len(_events(ctx)) == 50


def test_the_debounce_is_capped(ctx, project, monkeypatch):
    ctx.settings.retrain_debounce_max_s = 40
    first = [record_event(ctx, project, parse_event(created(i))) for i in range(5)][-1]
    with ctx.db.session() as s:  # the burst began a while ago
        run = s.get(PipelineRun, first.request.run_id)
        run.created_at = run.created_at - timedelta(seconds=35)
    record_event(ctx, project, parse_event(created(99)))
    with ctx.db.session() as s:
        run = s.get(PipelineRun, first.request.run_id)
        waited = pipelines.as_utc(run.not_before) - pipelines.as_utc(run.created_at)
    assert waited <= timedelta(seconds=40)


def test_events_during_a_run_wait_and_then_start_the_next(ctx, project):
    req = [record_event(ctx, project, parse_event(created(i))) for i in range(5)][-1].request
    assert pipelines.begin(ctx, req.run_id, req.task_id).wait_s > 0  # the quiet time
    with ctx.db.session() as s:  # ...is over
        s.get(PipelineRun, req.run_id).not_before = None
    began = pipelines.begin(ctx, req.run_id, req.task_id)
    assert began.wait_s == 0 and began.events == 0  # all five joined the queued run
    during = [record_event(ctx, project, parse_event(created(10 + i))) for i in range(6)]
    assert {o.status for o in during} == {"waiting"}
    assert during[-1].pending_annotations == 6
    assert follow_up(ctx, _project_id(ctx)) is None  # still running
    pipelines.finish(ctx, req.run_id, PipelineStatus.succeeded)
    nxt = follow_up(ctx, _project_id(ctx))
    assert nxt is not None and nxt.created and nxt.countdown == 30
    assert follow_up(ctx, _project_id(ctx)) is None  # the next one is queued now
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).where(WebhookEvent.pipeline_run_id == nxt.run_id)) == 6


def _project_id(ctx) -> int:
    with ctx.db.session() as s:
        return get_project(s, "cells").id


def test_paused_projects_record_but_never_start(ctx, project):
    with ctx.db.session() as s:
        update_triggers(get_project(s, project), {"active": False})
    outcomes = [record_event(ctx, project, parse_event(created(i))) for i in range(6)]
    assert {o.status for o in outcomes} == {"paused"} and len(_events(ctx)) == 6
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PipelineRun)) == 0


def test_events_of_unlinked_projects_are_refused(ctx, project):
    with pytest.raises(InputError, match="Label Studio project 8 is not linked"):
        record_event(ctx, project, parse_event(created(1, ls_project=8)))
    with ctx.db.session() as s:
        create_project(s, "bare", "detection", ["RBC"])
    with pytest.raises(InputError, match="no linked Label Studio project"):
        record_event(ctx, "bare", parse_event(created(1)))
    assert _events(ctx) == []


def test_pending_events_are_listed_until_a_run_takes_them(ctx, project, monkeypatch):
    from typer.testing import CliRunner

    from labelloop.cli.main import app
    from labelloop.pipelines.webhooks import pending_events

    outcomes = [record_event(ctx, project, parse_event(created(i))) for i in range(3)]
    assert {o.status for o in outcomes} == {"pending"}
    listed = pending_events(ctx, project)
    assert [e["annotation_ids"] for e in listed] == [[0], [1], [2]]
    assert {e["action"] for e in listed} == {"ANNOTATION_CREATED"}
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(ctx.settings.data_dir))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    r = CliRunner().invoke(app, ["webhooks", "events", "-p", project])
    assert r.exit_code == 0, r.output
    assert "3 pending event(s), 3 annotation(s); a retrain starts at 5" in r.output
    triggered = [record_event(ctx, project, parse_event(created(i))) for i in range(3, 5)][-1]
    assert triggered.status == "triggered" and pending_events(ctx, project) == []


def test_a_projects_own_secret_replaces_the_shared_one_for_it_alone(ctx, project, monkeypatch):
    with ctx.db.session() as s:
        create_project(s, "other", "detection", ["RBC"])
    monkeypatch.setattr(ctx.settings, "webhook_secret", SecretStr("shared"))
    assert check_webhook_secret(ctx, "cells", "shared") == "ok"
    set_webhook_secret(ctx, "cells", "mine")
    assert check_webhook_secret(ctx, "cells", "mine") == "ok"
    assert check_webhook_secret(ctx, "cells", "shared") == "wrong"
    assert check_webhook_secret(ctx, "cells", None) == "wrong"
    assert check_webhook_secret(ctx, "other", "mine") == "wrong"
    assert check_webhook_secret(ctx, "other", "shared") == "ok"
    monkeypatch.setattr(ctx.settings, "webhook_secret", SecretStr(""))
    assert check_webhook_secret(ctx, "other", "shared") == "off"
    assert check_webhook_secret(ctx, "cells", "mine") == "ok"  # its own needs no shared one
    with ctx.db.session() as s:
        assert get_project(s, "cells").webhook_secret_sha256 == digest("mine")


def test_a_secret_that_let_a_webhook_in_is_kept_briefly_and_a_new_one_works_at_once(
    ctx, project, monkeypatch
):
    """A burst of webhooks asks the database once per SECRET_TTL_S; a secret set by another
    process works at once (a mismatch asks again), the replaced one for at most the TTL;
    wrong secrets and made-up project names are never kept."""
    import time

    from sqlalchemy import event

    import labelloop.access as access

    queries: list[str] = []

    def listen(conn, cursor, statement, *rest) -> None:
        queries.append(statement)

    event.listen(ctx.db.engine, "before_cursor_execute", listen)
    try:
        monkeypatch.setattr(ctx.settings, "webhook_secret", SecretStr("shared"))
        assert [check_webhook_secret(ctx, "cells", "shared") for _ in range(20)] == ["ok"] * 20
        assert sum("webhook_secret_sha256" in q for q in queries) == 1
        with ctx.db.session() as s:  # as `labelloop webhooks register` in another process
            get_project(s, "cells").webhook_secret_sha256 = digest("mine")
        assert check_webhook_secret(ctx, "cells", "mine") == "ok"  # at once
        monkeypatch.setattr(access, "SECRET_TTL_S", 0.05)
        time.sleep(0.1)
        assert check_webhook_secret(ctx, "cells", "shared") == "wrong"  # after the TTL
        kept = dict(access._let_in)
        for name in ("nope", "cells"):
            assert check_webhook_secret(ctx, name, "guess") == "wrong"
        assert access._let_in == kept
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", listen)


def test_wiring_picks_the_secret_and_a_failed_registration_keeps_the_old(ctx, project, monkeypatch):
    monkeypatch.setattr(ctx.settings, "webhook_secret", SecretStr("shared"))
    assert wiring_secret(ctx, "cells", None) == WiringSecret("shared", False)
    fresh = wiring_secret(ctx, "cells", True)
    assert fresh.own and fresh.value != wiring_secret(ctx, "cells", True).value
    set_webhook_secret(ctx, "cells", "mine")
    assert wiring_secret(ctx, "cells", None).own  # a project's own is renewed
    assert wiring_secret(ctx, "cells", False) == WiringSecret("shared", False)
    with pytest.raises(ExternalServiceError):  # nothing listens on port 9
        register_webhook(
            ctx,
            "cells",
            ls_project=LS_PROJECT,
            base_url="http://labelloop:8000",
            ls_url="http://127.0.0.1:9",
            token="t",
            own_secret=True,
        )
    assert check_webhook_secret(ctx, "cells", "mine") == "ok"  # unchanged
    monkeypatch.setattr(ctx.settings, "webhook_secret", SecretStr(""))
    with pytest.raises(ConfigError, match="--project-secret"):
        wiring_secret(ctx, "other-without-secret", False)
