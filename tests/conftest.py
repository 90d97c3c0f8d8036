"""Shared fixtures: embedded settings and a migrated context per test."""

from __future__ import annotations

import pytest

from tests.support import require_shared_data

pytest_plugins = ["tests.integration.ls_fixtures", "tests.integration.browser"]


@pytest.fixture
def shared_data():
    return require_shared_data()


@pytest.fixture
def settings_factory(tmp_path):
    """Embedded settings in a temporary data dir (SQLite, local blobs, memory broker)."""
    from labelloop.config import Settings

    def make(**overrides):
        values = {
            "data_dir": tmp_path / "data",
            "database_url": "",
            "blob_url": "",
            "broker_url": "memory://",
            "result_backend": "",
            "redis_url": "",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def ctx(settings_factory):
    """A migrated embedded context; the process-wide context points at it for the test."""
    from labelloop.context import Context, set_context
    from labelloop.db import migrate

    settings = settings_factory()
    migrate.upgrade(settings.database_url)
    context = Context(settings)
    set_context(context)
    yield context
    set_context(None)
    context.close()
