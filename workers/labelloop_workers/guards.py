"""Guards around tasks: one training per project at a time (see `labelloop.locks`: a Redis
lock with expiry and renewal, or a file lock when embedded), and the errors a task
retries with backoff because they pass (a service restarting, a dropped connection)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

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

# Writers that get-or-create rows (ingest, the Label Studio sync) can still lose a race on
# a unique key to a concurrent transaction; they are idempotent, so running them again
# finds the winner's row. Elsewhere a unique violation is a bug and is not retried.
RACE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, IntegrityError)

__all__ = ["RACE_ERRORS", "TRANSIENT_ERRORS", "HeldLock", "LockBusy", "LockLost", "project_lock"]
