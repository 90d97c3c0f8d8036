"""Commands the workers package adds to `labelloop` (`register`, found by entry point):
`demo` (one full round on synthetic data through an embedded worker) and `pipeline run`
(the same chain, on the embedded worker or enqueued to a real broker)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.options import EpochsOpt, JsonOpt, ProjectOpt, recipe_overrides
from labelloop.cli.output import console, emit_json, err_console, handle_errors
from labelloop.cli.render import render_status
from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.db import migrate
from labelloop.errors import LabelloopError

DEMO_LABELS = ["RBC", "WBC", "Platelets"]
# A cap, not a schedule: the learning rate follows whichever of epochs and time is further
# along, so a cap that binds (85 s did on a busy machine: 20 of 45 epochs and no platelet
# learnt, see BENCHMARKS.md) gives a different, worse network from run to run.
DEMO_TRAIN_SECONDS = 240.0

demo_app = typer.Typer()
pipeline_app = typer.Typer(help="The whole loop as one Celery chain.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """The `labelloop.cli` entry point: add `demo` and the `pipeline` group to `app`."""
    app.add_typer(demo_app)
    app.add_typer(pipeline_app, name="pipeline")


def _watch(ctx: Context, project: str, result, timeout_s: float, show: bool) -> dict:
    """Wait for the chain, showing the training run's progress from the database (where
    workers record it) rather than from Celery's result backend."""
    from rich.status import Status

    from labelloop.reports import project_status

    deadline = time.monotonic() + timeout_s
    status = Status("waiting for the worker", console=err_console) if show else None
    if status:
        status.start()
    try:
        while not result.ready():
            if time.monotonic() > deadline:
                raise LabelloopError(f"the pipeline did not finish within {timeout_s:.0f} s")
            if status:
                st = project_status(ctx, project, round_items=0)
                runs = st["training_runs"]
                if runs and runs[-1]["status"] == "running":
                    p = runs[-1]["progress"] or {}
                    loss = p.get("loss")
                    status.update(
                        f"training: epoch {p.get('epoch', 0)}/{p.get('epochs', '?')}"
                        + (f", loss {loss:.3f}" if isinstance(loss, float) else "")
                    )
                elif st["model_versions"]:
                    status.update("scoring the pool, selecting, pushing")
                else:
                    status.update("ingesting and freezing")
            time.sleep(0.5)
    finally:
        if status:
            status.stop()
    return result.get(propagate=True)


def run_round_embedded(
    settings: Settings,
    project: str,
    *,
    budget: int,
    sources: list[dict],
    out_dir: str | None,
    show: bool,
    timeout_s: float = 3600,
    overrides: dict | None = None,
    target: str = "file",
) -> dict:
    from labelloop_workers.app import make_app
    from labelloop_workers.embedded import embedded_worker
    from labelloop_workers.pipeline import round_pipeline

    ctx = Context(settings)
    set_context(ctx)
    app = make_app(settings)
    app.set_current()
    app.set_default()
    with embedded_worker(app):
        result = round_pipeline(
            project,
            budget=budget,
            sources=sources,
            out_dir=out_dir,
            overrides=overrides,
            target=target,
        ).apply_async()
        return _watch(ctx, project, result, timeout_s, show)


@demo_app.command()
@handle_errors
def demo(
    data_dir: Annotated[
        Path, typer.Option(help="Where the demo keeps its database, blobs and exports.")
    ] = Path("labelloop-demo"),
    fresh: Annotated[bool, typer.Option(help="Delete the demo folder first.")] = True,
    labeled: Annotated[int, typer.Option(help="Synthetic annotated images.")] = 40,
    pool: Annotated[int, typer.Option(help="Synthetic unlabeled images.")] = 80,
    budget: Annotated[int, typer.Option(help="Images selected for annotation.")] = 10,
    epochs: EpochsOpt = None,
    train_seconds: Annotated[
        float,
        typer.Option(
            help="Wall-clock cap on training. An idle 2-core machine trains the recipe's 45 "
            "epochs in about 65 s, well inside it, and gets the same network every run; on "
            "a busy machine the cap stops training early (fewer epochs, a worse network)."
        ),
    ] = DEMO_TRAIN_SECONDS,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """One full active-learning round on synthetic blood smears, embedded (SQLite, local
    blobs, an in-process Celery worker running the production task code)."""
    from labelloop.projects import create_project
    from labelloop.reports import project_status
    from labelloop.synthetic import generate_dataset
    from labelloop.training.recipe import recipe_class

    started = time.monotonic()
    data_dir = data_dir.resolve()
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    settings = Settings.embedded_at(data_dir)
    migrate.upgrade(settings.database_url)
    show = not as_json
    if show:
        err_console.print(
            f"generating {labeled} annotated + {pool} unlabeled synthetic smears "
            f"in {data_dir / 'source'}"
        )
    summary = generate_dataset(data_dir / "source", n_labeled=labeled, n_pool=pool, seed=seed)
    ctx = Context(settings)
    with ctx.db.session() as s:
        create_project(s, "demo", "segmentation", DEMO_LABELS)
    sources = [
        {"path": str(data_dir / "source" / "export.json"), "fmt": "labelstudio"},
        {"path": str(data_dir / "source" / "pool"), "fmt": "images"},
    ]
    state = run_round_embedded(
        settings,
        "demo",
        budget=budget,
        sources=sources,
        out_dir=str(data_dir / "exports"),
        show=show,
        # Instance mode: the demo counts cells, and touching cells must count apart.
        overrides={
            "max_time_s": train_seconds,
            "mode": "instance",
            **recipe_overrides(None, epochs),
        },
    )
    st = project_status(ctx, "demo")
    wall = time.monotonic() - started
    if as_json:
        emit_json(
            {
                "wall_seconds": round(wall, 1),
                "pipeline": state,
                "status": st,
                "synthetic": getattr(summary, "__dict__", str(summary)),
            }
        )
        return
    render_status(st, console)
    planned = epochs or recipe_class("segmentation").model_fields["epochs"].default
    trained = st["model_versions"][-1]["epochs"] if st["model_versions"] else planned
    if trained is not None and trained < planned:
        err_console.print(
            f"[yellow]warning:[/] training stopped at the {train_seconds:g} s cap after "
            f"{trained} of {planned} epochs (a busy or slow machine): the model and its "
            "counts are weaker than an idle machine's; rerun when the machine is idle, or "
            "raise --train-seconds"
        )
    console.print(
        f"\nimport file for Label Studio: {state['push_destination']}/tasks.json "
        f"(labeling config beside it); for CVAT: {state['push_destination']}/cvat/"
        f"annotations.xml\ndemo finished in {wall:.0f} s; "
        f"inspect with: LABELLOOP_DATA_DIR={data_dir} labelloop status -p demo"
    )


@pipeline_app.command("run")
@handle_errors
def pipeline_run(
    project: ProjectOpt,
    budget: Annotated[int, typer.Option()],
    source: Annotated[
        list[Path] | None,
        typer.Option(help="Export files/folders to ingest first (format auto-detected)."),
    ] = None,
    to: Annotated[str, typer.Option("--to", help="file | labelstudio")] = "file",
    wait: Annotated[bool, typer.Option(help="Wait for the result (a real broker).")] = True,
    epochs: EpochsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run (ingest ->) freeze -> train -> score -> select -> push as one Celery chain.

    With the embedded broker (memory://) an in-process worker runs it; with a real
    broker it is enqueued for the workers (see docs/operations.md)."""
    from labelloop_workers.app import make_app
    from labelloop_workers.pipeline import round_pipeline

    settings = Settings()
    sources = [{"path": str(p)} for p in source or []]
    overrides = recipe_overrides(None, epochs) or None
    if settings.embedded:
        if settings.database_url.startswith("sqlite"):
            migrate.upgrade(settings.database_url)  # embedded: migrate on first use
        state = run_round_embedded(
            settings,
            project,
            budget=budget,
            sources=sources,
            out_dir=None,
            show=not as_json,
            target=to,
            overrides=overrides,
        )
    else:
        app_ = make_app(settings)
        app_.set_current()
        sig = round_pipeline(
            project, budget=budget, sources=sources, target=to, overrides=overrides
        )
        res = sig.apply_async()
        if not wait:
            if as_json:
                emit_json({"task_id": res.id})
            else:
                console.print(f"queued {res.id}")
            return
        state = res.get(timeout=24 * 3600)
    if as_json:
        emit_json(state)
    else:
        console.print(state)
