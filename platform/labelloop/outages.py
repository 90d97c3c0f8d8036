"""Which service is down, said in one line: the CLI prints it (exit 2) and the API answers
503 with it, instead of a driver's traceback.

A connection failure surfaces as many exception types (SQLAlchemy's OperationalError
around psycopg's, redis-py's ConnectionError, kombu's OperationalError around either);
`service_down` walks the exception's causes and names the service, its URL without
credentials, and what to do."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from labelloop.config import Settings
from labelloop.errors import ServiceUnavailable


def redact(url: str) -> str:
    """The URL without user name or password (safe to print and log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def service_down(exc: BaseException, settings: Settings) -> ServiceUnavailable | None:
    """The outage `exc` reports, or None when it is not a service being unreachable."""
    import redis.exceptions
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as BrokerError

    for err in _chain(exc):
        if isinstance(err, ServiceUnavailable):
            return err
        if isinstance(err, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) and (
            not settings.database_url.startswith("sqlite")
        ):
            return ServiceUnavailable(
                "the database",
                redact(settings.database_url),
                _first_line(err),
                "start PostgreSQL or fix LABELLOOP_DATABASE_URL",
            )
        if isinstance(err, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            url = settings.redis_url or settings.broker_url
            return ServiceUnavailable(
                "Redis", redact(url), _first_line(err), "start Redis or fix LABELLOOP_REDIS_URL"
            )
        if isinstance(err, BrokerError):
            return ServiceUnavailable(
                "the broker",
                redact(settings.broker_url),
                _first_line(err),
                "start it or fix LABELLOOP_BROKER_URL",
            )
    return None
