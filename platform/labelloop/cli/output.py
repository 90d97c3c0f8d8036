"""Output helpers: one JSON document per command with --json, Rich tables otherwise, and
user errors as exit code 2 with the message (never a traceback)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from labelloop.errors import LabelloopError

# Piped output gets a wide fixed width: Rich's 80-column default truncates the tables.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def handle_errors(fn: Callable) -> Callable:
    """Turn the project's own errors, and a service that cannot be reached (database,
    Redis, broker: one line naming it and its URL without credentials), into `error: ...`
    on stderr and exit code 2. Every command is wrapped in it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelloopError as exc:
            _fail(exc, kwargs.get("as_json"))
        except Exception as exc:
            from labelloop.config import Settings
            from labelloop.outages import service_down

            down = service_down(exc, Settings())
            if down is None:
                raise
            _fail(down, kwargs.get("as_json"))

    wrapper.handles_errors = True  # type: ignore[attr-defined]
    return wrapper


def _fail(exc: LabelloopError, as_json: bool | None) -> None:
    if as_json:
        emit_json({"error": str(exc), "type": type(exc).__name__})
    # markup=False: text like `labelloop:lock:train` must not turn into emoji or styles.
    err_console.print("error: ", style="bold red", end="")
    err_console.print(str(exc), markup=False, emoji=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


@contextmanager
def progress(description: str, total: int | None, enabled: bool) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr; a no-op when disabled (--json or not a terminal)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(completed: int, total_now: int | None = None, info: str = "") -> None:
            bar.update(task, completed=completed, total=total_now or total, info=info)

        yield update
