"""The project's own error types: everything a user can cause raises one of these.

The CLI turns them into exit code 2 with the message; anything else is a bug.
"""

from __future__ import annotations


class LabelloopError(Exception):
    """Base class for errors caused by input, configuration or state, not by a bug."""


class InputError(LabelloopError):
    """Bad input data: names the file, the record and the reason."""

    def __init__(self, reason: str, *, file: str | None = None, record: str | None = None):
        self.reason = reason
        self.file = file
        self.record = record
        where = ", ".join(p for p in (file and f"file {file}", record and f"record {record}") if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class NotFoundError(LabelloopError):
    """A named project, version or round does not exist."""


class ConfigError(LabelloopError):
    """Settings or a recipe are inconsistent."""


class ExternalServiceError(LabelloopError):
    """Label Studio, CVAT or storage failed; callers may retry."""


class ServiceUnavailable(ExternalServiceError):
    """A service the command needs (database, Redis, broker) cannot be reached."""

    def __init__(self, service: str, url: str, reason: str, hint: str):
        self.service, self.url, self.reason, self.hint = service, url, reason, hint
        super().__init__(f"{service} is unreachable at {url} ({reason}); {hint}")


class ConflictError(LabelloopError):
    """The request contradicts the current state (e.g. cancelling a finished run)."""


class Cancelled(LabelloopError):
    """Someone cancelled the run; the work stops at the next checkpoint of progress."""


class Interrupted(LabelloopError):
    """The process was asked to stop (SIGTERM: a deploy, a scale-down). The training
    stopped after its current step with its checkpoint kept; the run is not a failure and
    goes back to the queue, to resume from that checkpoint."""
