"""The Celery configuration the invariants rely on (no broker needed to check it)."""

from __future__ import annotations

from labelloop.config import Settings
from labelloop_workers.app import VISIBILITY_TIMEOUT_S, make_app
from labelloop_workers.routes import QUEUES, ROUTES


def _app():
    app = make_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
    app.loader.import_default_modules()
    return app


def test_every_labelloop_task_has_an_explicit_route():
    app = _app()
    names = {n for n in app.tasks if n.startswith("labelloop.")}
    assert names == set(ROUTES), names ^ set(ROUTES)
    assert set(ROUTES.values()) <= set(QUEUES)
    assert ROUTES["labelloop.train"] == "gpu"


def test_late_ack_prefetch_one_and_long_visibility():
    conf = _app().conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert Settings().training_lock_ttl_s < VISIBILITY_TIMEOUT_S


def test_every_beat_entry_expires():
    schedule = _app().conf.beat_schedule
    assert schedule
    for entry in schedule.values():
        assert entry["options"]["expires"] > 0


def test_beat_builds_its_schedule_from_the_database():
    conf = _app().conf
    assert conf.beat_scheduler == "labelloop_workers.schedule:ProjectScheduler"


def test_visibility_timeout_and_restore_sweep_come_from_settings():
    app = make_app(Settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout_s=20))
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == 20
    # A killed worker's task comes back within about visibility + interval seconds.
    assert options["unacked_restore_interval"] == 5 and options["unacked_restore_throttle"] == 1


def test_the_celery_dispatcher_is_found_by_entry_point():
    from labelloop.pipelines.dispatch import get_dispatcher
    from labelloop_workers.dispatch import CeleryDispatcher

    assert isinstance(get_dispatcher(Settings()), CeleryDispatcher)


def test_only_get_or_create_stages_retry_a_lost_unique_key_race():
    """Ingest and the pipeline's sync are idempotent get-or-create writers: a unique key a
    concurrent transaction took first is retried. Elsewhere it is a bug: not retried."""
    from sqlalchemy.exc import IntegrityError

    app = _app()
    for name in ("labelloop.ingest", "labelloop.pipeline"):
        assert IntegrityError in app.tasks[name].autoretry_for, name
    for name in ("labelloop.train", "labelloop.freeze", "labelloop.push"):
        assert IntegrityError not in getattr(app.tasks[name], "autoretry_for", ()), name
