"""One training per project at a time, across processes and hosts.

With Redis configured the lock is a Redis key with an expiry (`training_lock_ttl_s`) that
a background thread renews every third of it while the holder works: a training of any
length keeps it, and a killed worker's lock frees itself within one expiry. Should the
renewal find the key gone or taken (Redis lost it, or the holder stalled past the
expiry), `HeldLock.lost` is set and `check()` raises LockLost, so the trainer stops at
its next progress report instead of training alongside a second holder.

Embedded (no Redis) a file lock in the data dir does the same job on one machine; the
operating system frees it when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labelloop.config import Settings
from labelloop.errors import LabelloopError

_log = logging.getLogger(__name__)


class LockBusy(LabelloopError):
    """Another holder has the lock; the caller retries later."""


class LockLost(LabelloopError):
    """The lock expired or was taken while we held it; stop and retry later."""


@dataclass
class HeldLock:
    name: str
    lost: threading.Event = field(default_factory=threading.Event)
    renewals: int = 0

    def check(self) -> None:
        if self.lost.is_set():
            raise LockLost(f"lost the lock {self.name} while holding it")


def lock_name(project: str) -> str:
    return f"labelloop:lock:train:{project}"


@contextmanager
def project_lock(settings: Settings, project: str, ttl_s: int | None = None) -> Iterator[HeldLock]:
    """Hold the project's training lock, or raise LockBusy at once."""
    ttl_s = ttl_s or settings.training_lock_ttl_s
    if settings.redis_url:
        with _redis_lock(settings.redis_url, lock_name(project), ttl_s) as held:
            yield held
        return
    with _file_lock(Path(settings.data_dir) / "locks" / f"train-{project}.lock") as held:
        yield held


@contextmanager
def _redis_lock(url: str, name: str, ttl_s: int) -> Iterator[HeldLock]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    # thread_local=False: the renewal thread must see the token the holder acquired with.
    lock = client.lock(name, timeout=ttl_s, blocking=False, thread_local=False)
    if not lock.acquire(blocking=False):
        client.close()
        raise LockBusy(f"{name} is held by another worker")
    held = HeldLock(name)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lock, ttl_s, held, stop), name=f"renew {name}", daemon=True
    )
    renewer.start()
    try:
        yield held
    finally:
        stop.set()
        renewer.join(timeout=5)
        # expired or taken while we worked: nothing left to release
        with contextlib.suppress(redis.exceptions.LockError, redis.exceptions.RedisError):
            lock.release()
        client.close()


def _renew(lock, ttl_s: int, held: HeldLock, stop: threading.Event) -> None:
    import redis

    every = max(ttl_s / 3, 0.5)
    while not stop.wait(every):
        try:
            lock.reacquire()  # back to a full ttl, only while the token is still ours
            held.renewals += 1
        except redis.exceptions.LockNotOwnedError:
            _log.error("%s: expired or taken by another holder; stopping", held.name)
            held.lost.set()
            return
        except redis.exceptions.RedisError as exc:  # Redis restarting: try again next time
            _log.warning("%s: renewal failed (%s); retrying", held.name, exc)


@contextmanager
def _file_lock(path: Path) -> Iterator[HeldLock]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"{path} is held by another process") from None
        yield HeldLock(str(path))
    finally:
        os.close(fd)
