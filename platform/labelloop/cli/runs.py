"""`labelloop runs ...`: pipeline runs, the same operations as the REST API, directly.

Each command calls the functions the API calls (`labelloop.pipelines.runs`) and hands
runs to the workers through the same dispatcher."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from labelloop.cli.options import (
    EpochsOpt,
    JsonOpt,
    ProjectOpt,
    RecipeOpt,
    context,
    interactive,
    recipe_overrides,
)
from labelloop.cli.output import console, emit_json, err_console, handle_errors
from labelloop.push.targets import NAMES as PUSH_TARGETS

FINAL = ("succeeded", "stopped", "failed", "cancelled", "coalesced")

app = typer.Typer(
    help="Pipeline runs (sync -> freeze -> train -> score -> select -> push): start one, "
    "watch its progress, cancel it.",
    no_args_is_help=True,
)


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
    if run.get("round_progress"):
        from labelloop.cli.render import progress_line

        console.print(f"  round progress: {progress_line(run['round_progress'])}")
    if run.get("round_model"):
        console.print(f"  round model: {run['round_model']['reason']}")
    tr = run.get("training")
    if tr:
        console.print(
            f"  training run {tr['id']}: {tr['status']}, attempts {tr['attempts']}"
            + (f", checkpoint at epoch {tr['checkpoint_epoch']}" if tr["checkpoint_epoch"] else "")
            + (f", error: {tr['error']}" if tr.get("error") else "")
        )


@app.command("start")
@handle_errors
def runs_start(
    project: ProjectOpt,
    epochs: EpochsOpt = None,
    recipe: RecipeOpt = None,
    budget: Annotated[int | None, typer.Option(help="Images to select.", min=1)] = None,
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

    ctx = context()
    if ctx.settings.embedded and not wait:
        raise ConfigError(
            "--no-wait needs a real broker (LABELLOOP_BROKER_URL); the embedded one "
            "runs inside this command"
        )
    params = PipelineParams(
        budget=budget,
        push_to=push_to,
        recipe=recipe_overrides(recipe, epochs),
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
            run = _wait(ctx, target, timeout, show=interactive(as_json))
    if as_json:
        emit_json({"run": run, "coalesced": not req.created, "request_id": req.run_id})
    else:
        _show_run(run)
    if wait and run["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command("list")
@handle_errors
def runs_list(
    project: ProjectOpt,
    limit: Annotated[int, typer.Option(help="Newest N runs.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """A project's pipeline runs, newest first."""
    from labelloop.pipelines.runs import list_runs

    rows = list_runs(context(), project, limit=limit)
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


@app.command("show")
@handle_errors
def runs_show(run_id: int, as_json: JsonOpt = False) -> None:
    """A run's status, stage, ids and training progress."""
    from labelloop.pipelines.runs import run_info

    run = run_info(context(), run_id)
    if as_json:
        emit_json(run)
    else:
        _show_run(run)


@app.command("cancel")
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

    ctx = context()
    result = cancel(ctx, run_id, reason)
    if result.task_id:
        get_dispatcher(ctx.settings).revoke(result.task_id)
    run = run_info(ctx, run_id)
    if as_json:
        emit_json(run)
    else:
        console.print(f"run {run_id} cancelled (was {result.was})")
