"""`labelloop serve`: the REST API, the webhook endpoint and the dashboard."""

from __future__ import annotations

from typing import Annotated

import typer

from labelloop.cli.output import handle_errors

app = typer.Typer()


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.", min=1)] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the REST API (OpenAPI at /docs and /openapi.json), the webhook endpoint and
    the dashboard (web pages at /, log-in with an API token).

    Tokens are those of `labelloop tokens create` and of LABELLOOP_API_TOKENS (a JSON
    object name -> token, admin over all projects); at least one must exist. Webhook
    secrets: a project's own (`webhooks register --project-secret`), else
    LABELLOOP_WEBHOOK_SECRET. With the in-process broker (memory://) the
    server also runs an embedded worker, so triggered runs execute right there."""
    import uvicorn

    from labelloop.access import active_token_count, env_tokens
    from labelloop.api.app import check_schema
    from labelloop.config import Settings
    from labelloop.context import Context
    from labelloop.errors import ConfigError

    settings = Settings()
    check_schema(settings)  # fail here, with exit 2, rather than in every worker
    if not env_tokens(settings):
        ctx = Context(settings)
        try:
            stored = active_token_count(ctx)
        finally:
            ctx.close()
        if not stored:
            raise ConfigError(
                "no API tokens: make one with `labelloop tokens create NAME --role admin`, "
                'or set LABELLOOP_API_TOKENS, e.g. \'{"alice": "<random token>"}\''
            )
    if settings.embedded and workers > 1:
        raise ConfigError(
            "--workers > 1 needs a real broker (LABELLOOP_BROKER_URL): each process would "
            "run its own in-memory queue"
        )
    uvicorn.run(
        "labelloop.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
    )
