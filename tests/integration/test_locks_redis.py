"""The training lock on a real Redis: expiry, renewal while held, release, a killed
holder's lock freeing itself, and a lost lock stopping its holder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis

from labelloop.config import Settings
from labelloop.locks import LockBusy, LockLost, lock_name, project_lock
from tests.integration.services import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(redis_url, tmp_path):
    return Settings(
        data_dir=tmp_path, redis_url=redis_url, broker_url="memory://", training_lock_ttl_s=3
    )


def test_a_held_lock_is_renewed_past_its_expiry_and_excludes_others(settings, redis_url):
    project = f"lock-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    with project_lock(settings, project) as held:
        with (
            pytest.raises(LockBusy, match="held by another worker"),
            project_lock(settings, project),
        ):
            pass
        time.sleep(7.5)  # two and a half expiries
        assert client.exists(lock_name(project))
        assert 0 < client.pttl(lock_name(project)) <= 3000
        assert held.renewals >= 3
        held.check()
    assert not client.exists(lock_name(project))
    with project_lock(settings, project):
        pass


def test_a_killed_holders_lock_expires(settings, redis_url):
    project = f"lock-{uuid.uuid4().hex[:6]}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from labelloop.config import Settings
                from labelloop.locks import project_lock
                s = Settings(data_dir={str(settings.data_dir)!r}, redis_url={redis_url!r},
                             broker_url="memory://", training_lock_ttl_s=3)
                with project_lock(s, {project!r}):
                    print("held", flush=True)
                    time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        time.sleep(4)  # renewed while the holder lives
        with pytest.raises(LockBusy), project_lock(settings, project):
            pass
        holder.kill()
        holder.wait(timeout=10)
        killed = time.monotonic()

        def free() -> bool:
            try:
                with project_lock(settings, project):
                    return True
            except LockBusy:
                return False

        wait_for(free, 10, "the killed holder's lock to expire")
        assert time.monotonic() - killed <= 3.5  # within one expiry
    finally:
        holder.kill()


def test_a_lost_lock_stops_its_holder(settings, redis_url):
    project = f"lock-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    with project_lock(settings, project) as held:
        client.set(lock_name(project), "someone else", px=10_000)  # taken behind our back
        wait_for(held.lost.is_set, 5, "the renewal to notice")
        with pytest.raises(LockLost, match="lost the lock"):
            held.check()
    assert client.get(lock_name(project)) == b"someone else"  # never released by us
    client.delete(lock_name(project))
