"""Guards around tasks: one training per project at a time (see `labelloop.locks`: a Redis
lock with expiry and renewal, or a file lock when embedded), and the errors a task
retries with backoff because they pass (a service restarting, a dropped connection)."""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

from labelloop.errors import ExternalServiceError
from labelloop.locks import HeldLock, LockBusy, LockLost, project_lock

# Label Studio / CVAT / storage (ExternalServiceError, and socket-level errors of fsspec
# backends), and the database connection (dropped, restarting, failing over).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ExternalServiceError,
    OperationalError,
    InterfaceError,
    ConnectionError,
    TimeoutError,
)

__all__ = ["TRANSIENT_ERRORS", "HeldLock", "LockBusy", "LockLost", "project_lock"]
