"""Guards around tasks: one training per project at a time.

With Redis configured the lock is a Redis lock with an expiry (a dead worker's lock
frees itself); embedded, a file lock in the data dir does the same job in one machine."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labelloop.config import Settings


class LockBusy(Exception):
    """Another holder has the lock; the caller retries later."""


@contextmanager
def project_lock(settings: Settings, project: str, ttl_s: int | None = None) -> Iterator[None]:
    ttl_s = ttl_s or settings.training_lock_ttl_s
    name = f"labelloop:lock:train:{project}"
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        lock = client.lock(name, timeout=ttl_s, blocking=False)
        if not lock.acquire(blocking=False):
            raise LockBusy(name)
        try:
            yield
        finally:
            # expired while we worked: nothing left to release
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()
        return
    path = Path(settings.data_dir) / "locks" / f"train-{project}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(name) from None
        yield
    finally:
        os.close(fd)
