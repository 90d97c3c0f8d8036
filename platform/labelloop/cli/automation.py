"""`labelloop serve`, `runs ...`, `webhooks register`, `project schedule`: retraining that
runs itself, and the same operations as the REST API, directly.

Each command calls the functions the API calls (`labelloop.pipelines.runs`, `.webhooks`)
and hands runs to the workers through the same dispatcher."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from labelloop.cli.output import console, emit_json, err_console, handle_errors
from labelloop.push.targets import NAMES as PUSH_TARGETS

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name.")]
FINAL = ("succeeded", "stopped", "failed", "cancelled", "coalesced")

runs_app = typer.Typer(
    help="Pipeline runs (sync -> freeze -> train -> score -> select -> push): start one, "
    "watch its progress, cancel it.",
    no_args_is_help=True,
)
webhooks_app = typer.Typer(
    help="Label Studio webhooks that trigger retraining.", no_args_is_help=True
)


def _context():
    from labelloop.cli.main import context

    return context()


def _progress_line(run: dict[str, Any]) -> str:
    line = f"run {run['id']}: {run['status']}"
    if run.get("stage") and run["status"] == "running":
        line += f", {run['stage']}"
    p = (run.get("training") or {}).get("progress") or {}
    if run.get("stage") == "train" and p.get("epoch"):
        line += f" epoch {p['epoch']}/{p.get('epochs', '?')}"
        if isinstance(p.get("loss"), float):
            line += f", loss {p['loss']:.3f}"
    return line


def _wait(ctx, run_id: int, timeout_s: float, show: bool) -> dict[str, Any]:
    from rich.status import Status

    from labelloop.errors import LabelloopError
    from labelloop.pipelines.runs import run_info

    deadline = time.monotonic() + timeout_s
    status = Status(f"run {run_id}: queued", console=err_console) if show else None
    if status:
        status.start()
    try:
        while True:
            run = run_info(ctx, run_id)
            if run["status"] in FINAL:
                return run
            if time.monotonic() > deadline:
                raise LabelloopError(f"run {run_id} did not finish within {timeout_s:.0f} s")
            if status:
                status.update(_progress_line(run))
            time.sleep(1.0)
    finally:
        if status:
            status.stop()


def _show_run(run: dict[str, Any]) -> None:
    console.print(_progress_line(run) + (f" — {run['message']}" if run.get("message") else ""))
    state = run.get("state") or {}
    ids = {k: state[k] for k in ("dataset_version", "model_version_id", "round_id") if k in state}
    if ids:
        console.print("  " + ", ".join(f"{k} {v}" for k, v in ids.items()))
    tr = run.get("training")
    if tr:
        console.print(
            f"  training run {tr['id']}: {tr['status']}, attempts {tr['attempts']}"
            + (f", checkpoint at epoch {tr['checkpoint_epoch']}" if tr["checkpoint_epoch"] else "")
            + (f", error: {tr['error']}" if tr.get("error") else "")
        )


def _recipe_overrides(recipe: Path | None, epochs: int | None) -> dict[str, Any]:
    import yaml

    from labelloop.errors import InputError

    overrides: dict[str, Any] = {}
    if recipe is not None:
        data = yaml.safe_load(recipe.read_text()) or {}
        if not isinstance(data, dict):
            raise InputError("a recipe file holds a mapping of fields", file=str(recipe))
        overrides.update(data)
    if epochs is not None:
        overrides["epochs"] = epochs
    return overrides


def register(app: typer.Typer, project_app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
    app.add_typer(webhooks_app, name="webhooks")

    @app.command()
    @handle_errors
    def serve(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        workers: Annotated[int, typer.Option(help="Server processes.", min=1)] = 1,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Run the REST API (OpenAPI at /docs and /openapi.json) and the webhook endpoint.

        Tokens come from LABELLOOP_API_TOKENS (a JSON object name -> token), the webhook
        secret from LABELLOOP_WEBHOOK_SECRET. With the in-process broker (memory://) the
        server also runs an embedded worker, so triggered runs execute right there."""
        import uvicorn

        from labelloop.api.app import check_schema
        from labelloop.config import Settings
        from labelloop.errors import ConfigError

        settings = Settings()
        if not any(t.get_secret_value() for t in settings.api_tokens.values()):
            raise ConfigError(
                'no API tokens: set LABELLOOP_API_TOKENS, e.g. \'{"alice": "<random token>"}\''
            )
        if settings.embedded and workers > 1:
            raise ConfigError(
                "--workers > 1 needs a real broker (LABELLOOP_BROKER_URL): each process would "
                "run its own in-memory queue"
            )
        check_schema(settings)  # fail here, with exit 2, rather than in every worker
        uvicorn.run(
            "labelloop.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            proxy_headers=True,
        )

    @runs_app.command("start")
    @handle_errors
    def runs_start(
        project: ProjectOpt,
        epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
        recipe: Annotated[
            Path | None,
            typer.Option(help="YAML file of recipe fields to override.", exists=True),
        ] = None,
        budget: Annotated[int | None, typer.Option(help="Images to select.")] = None,
        push_to: Annotated[str | None, typer.Option(help=" | ".join(PUSH_TARGETS))] = None,
        sync: Annotated[bool, typer.Option(help="Sync linked Label Studio projects.")] = True,
        wait: Annotated[bool, typer.Option(help="Wait for the run to end.")] = True,
        timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 24 * 3600,
        as_json: JsonOpt = False,
    ) -> None:
        """Queue the project's pipeline for the workers (what POST /projects/{p}/runs does);
        coalesced into the run already active, if there is one. Embedded (memory://), it
        runs in this process."""
        from labelloop.errors import ConfigError
        from labelloop.pipelines.dispatch import get_dispatcher, launch
        from labelloop.pipelines.runs import PipelineParams, request_pipeline, run_info

        ctx = _context()
        if ctx.settings.embedded and not wait:
            raise ConfigError(
                "--no-wait needs a real broker (LABELLOOP_BROKER_URL); the embedded one "
                "runs inside this command"
            )
        params = PipelineParams(
            budget=budget,
            push_to=push_to,
            recipe=_recipe_overrides(recipe, epochs),
            sync=sync,
        )
        dispatcher = get_dispatcher(ctx.settings)
        req = request_pipeline(ctx, project, trigger="cli", params=params)
        with dispatcher.serving():
            launch(ctx, dispatcher, req)
            target = req.run_id if req.created else req.coalesced_into
            if not req.created and not as_json:
                err_console.print(f"a run is already active: coalesced into run {target}")
            run = run_info(ctx, target)
            if wait:
                run = _wait(ctx, target, timeout, show=not as_json and sys.stderr.isatty())
        if as_json:
            emit_json({"run": run, "coalesced": not req.created, "request_id": req.run_id})
        else:
            _show_run(run)
        if wait and run["status"] in ("failed", "cancelled"):
            raise typer.Exit(1)

    @runs_app.command("list")
    @handle_errors
    def runs_list(
        project: ProjectOpt,
        limit: Annotated[int, typer.Option(help="Newest N runs.")] = 20,
        as_json: JsonOpt = False,
    ) -> None:
        """A project's pipeline runs, newest first."""
        from labelloop.pipelines.runs import list_runs

        rows = list_runs(_context(), project, limit=limit)
        if as_json:
            emit_json(rows)
            return
        t = Table(title=f"pipeline runs of {project}", title_justify="left")
        for c in ("id", "trigger", "by", "status", "stage", "created", "message"):
            t.add_column(c)
        for r in rows:
            t.add_row(
                str(r["id"]),
                r["trigger"],
                r["requested_by"] or "",
                r["status"],
                r["stage"] or "",
                (r["created_at"] or "")[:19],
                (r["message"] or "")[:70],
            )
        console.print(t)

    @runs_app.command("show")
    @handle_errors
    def runs_show(run_id: int, as_json: JsonOpt = False) -> None:
        """A run's status, stage, ids and training progress."""
        from labelloop.pipelines.runs import run_info

        run = run_info(_context(), run_id)
        if as_json:
            emit_json(run)
        else:
            _show_run(run)

    @runs_app.command("cancel")
    @handle_errors
    def runs_cancel(
        run_id: int,
        reason: Annotated[str, typer.Option(help="Recorded with the run.")] = "cancelled",
        as_json: JsonOpt = False,
    ) -> None:
        """Cancel a queued or running pipeline run; its training stops at the next progress
        report and keeps its last checkpoint."""
        from labelloop.pipelines.dispatch import get_dispatcher
        from labelloop.pipelines.runs import cancel, run_info

        ctx = _context()
        result = cancel(ctx, run_id, reason)
        if result.task_id:
            get_dispatcher(ctx.settings).revoke(result.task_id)
        run = run_info(ctx, run_id)
        if as_json:
            emit_json(run)
        else:
            console.print(f"run {run_id} cancelled (was {result.was})")

    @webhooks_app.command("register")
    @handle_errors
    def webhooks_register(
        project: ProjectOpt,
        ls_project: Annotated[int, typer.Option("--ls-project", help="Label Studio project id.")],
        url: Annotated[
            str,
            typer.Option("--url", help="Base URL where Label Studio reaches `labelloop serve`."),
        ],
        ls_url: Annotated[
            str | None, typer.Option(help="Label Studio URL (default: LABELLOOP_LABELSTUDIO_URL).")
        ] = None,
        label_map: Annotated[
            list[str] | None,
            typer.Option(help="Rename Label Studio classes when syncing: 'src=dst'."),
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Create (or update) the webhook in Label Studio and link its project as a source
        the pipeline syncs. Label Studio sends LABELLOOP_WEBHOOK_SECRET back in a header;
        the token comes from LABELLOOP_LABELSTUDIO_TOKEN."""
        from labelloop.ingest.formats import parse_label_map
        from labelloop.labelstudio.webhooks import register_webhook

        result = register_webhook(
            _context(),
            project,
            ls_project=ls_project,
            base_url=url,
            ls_url=ls_url,
            label_map=parse_label_map(label_map),
        )
        if as_json:
            emit_json(result)
        else:
            verb = "registered" if result["created"] else "updated"
            console.print(
                f"webhook {result['webhook_id']} {verb} in {result['ls_url']} project "
                f"{ls_project} -> {result['url']}"
            )

    @project_app.command("schedule")
    @handle_errors
    def project_schedule(
        name: Annotated[str, typer.Argument(help="Project name.")],
        cron: Annotated[
            str | None, typer.Option(help="Beat crontab 'm h dom mon dow' ('default' resets).")
        ] = None,
        min_annotations: Annotated[
            int | None, typer.Option(help="Annotation events that start a retrain.", min=1)
        ] = None,
        debounce: Annotated[
            float | None, typer.Option(help="Seconds of quiet before it starts.", min=0)
        ] = None,
        budget: Annotated[int | None, typer.Option(help="Images per round.", min=1)] = None,
        push_to: Annotated[str | None, typer.Option(help=" | ".join(PUSH_TARGETS))] = None,
        active: Annotated[
            bool | None, typer.Option("--active/--paused", help="Run the triggers, or not.")
        ] = None,
        recipe: Annotated[
            Path | None,
            typer.Option(
                help="YAML file of recipe fields every pipeline run overrides.", exists=True
            ),
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Show or change what starts the project's pipeline: its crontab (beat), the
        webhook threshold and debounce, the round size and push target."""
        from labelloop.pipelines.triggers import effective_triggers, update_triggers
        from labelloop.projects import get_project

        changes: dict[str, Any] = {}
        if cron is not None:
            changes["cron"] = None if cron == "default" else cron
        for key, value in (
            ("min_annotations", min_annotations),
            ("debounce_s", debounce),
            ("budget", budget),
            ("push_to", push_to),
            ("active", active),
        ):
            if value is not None:
                changes[key] = value
        if recipe is not None:
            changes["recipe"] = _recipe_overrides(recipe, None)
        ctx = _context()
        with ctx.db.session() as s:
            project = get_project(s, name)
            if changes:
                update_triggers(project, changes)
            eff = effective_triggers(project, ctx.settings).model_dump()
        if as_json:
            emit_json(eff)
            return
        for key, value in eff.items():
            console.print(f"{key:16} {value}")
