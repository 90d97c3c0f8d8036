"""`labelloop`: every stage of the loop as a command; `--json` on each for scripting.

Commands call the same stage functions as the Celery tasks; exit code 2 means bad input
or state (the message says which file, record or name, and why)."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.output import console, emit_json, err_console, handle_errors, progress
from labelloop.cli.render import render_ingest_details, render_status
from labelloop.cli.sync import sync_app
from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.db import migrate
from labelloop.errors import InputError
from labelloop.kinds import TASKS

app = typer.Typer(
    name="labelloop",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Annotation-to-model active learning for cell and medical images.\n\n"
    "The loop: **ingest** annotations -> **dataset freeze** -> **train** -> "
    "**score** the unlabeled pool -> **select** the least confident -> "
    "**push** them back to annotators with predictions. Settings come from "
    "LABELLOOP_* environment variables or .env (see docs/operations.md).",
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
project_app = typer.Typer(help="Create and list projects.", no_args_is_help=True)
dataset_app = typer.Typer(help="Frozen dataset versions.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(project_app, name="project")
app.add_typer(dataset_app, name="dataset")
app.add_typer(sync_app, name="sync")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name.")]


def _interactive(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


def context(*, migrate_sqlite: bool = True) -> Context:
    """Build the context; an embedded SQLite database is migrated on first use, a server
    database must be migrated explicitly (`labelloop db upgrade`)."""
    ctx = Context(Settings())
    set_context(ctx)
    url = ctx.settings.database_url
    if migrate.current_revision(url) != migrate.head_revision(url):
        if url.startswith("sqlite") and migrate_sqlite:
            migrate.upgrade(url)
        else:
            from labelloop.errors import ConfigError

            raise ConfigError("the database schema is not up to date; run `labelloop db upgrade`")
    return ctx


@db_app.command("upgrade")
@handle_errors
def db_upgrade(
    revision: str = "head",
    wait: Annotated[
        float,
        typer.Option(help="Seconds to wait for the database to accept connections first."),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Apply migrations up to REVISION (default: head). Deployments run this once before
    the API, workers and beat start (`--wait` for a database that is still starting)."""
    url = Settings().database_url
    migrate.wait_for_database(url, wait)
    migrate.upgrade(url, revision)
    current = migrate.current_revision(url)
    if as_json:
        emit_json({"revision": current})
    else:
        console.print(f"database at revision {current}")


@db_app.command("current")
@handle_errors
def db_current(as_json: JsonOpt = False) -> None:
    """Show the database's revision and the newest one available."""
    url = Settings().database_url
    data = {"revision": migrate.current_revision(url), "head": migrate.head_revision(url)}
    if as_json:
        emit_json(data)
    else:
        console.print(f"revision {data['revision']} (newest available: {data['head']})")


@project_app.command("create")
@handle_errors
def project_create(
    name: str,
    task: Annotated[str, typer.Option(help=" | ".join(TASKS))],
    labels: Annotated[
        str, typer.Option(help="Comma-separated class names, e.g. RBC,WBC,Platelets")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Create a project (idempotent: the same name, task and labels return it)."""
    from labelloop.projects import create_project, label_names

    ctx = context()
    with ctx.db.session() as s:
        project, created = create_project(s, name, task, labels.split(","))
        data = {
            "id": project.id,
            "name": project.name,
            "task": project.task,
            "labels": label_names(project),
            "created": created,
        }
    if as_json:
        emit_json(data)
    else:
        verb = "created" if created else "exists:"
        console.print(f"project {verb} {name} ({task}; {', '.join(data['labels'])})")


@project_app.command("list")
@handle_errors
def project_list(as_json: JsonOpt = False) -> None:
    """List projects."""
    from sqlalchemy import select

    from labelloop.db.models import Project

    ctx = context()
    with ctx.db.session() as s:
        rows = [
            {"name": p.name, "task": p.task, "labels": [lc.name for lc in p.labels]}
            for p in s.scalars(select(Project).order_by(Project.name))
        ]
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            console.print(f"{r['name']}  {r['task']}  {', '.join(r['labels'])}")


@app.command()
@handle_errors
def ingest(
    path: Annotated[
        Path,
        typer.Argument(
            help="Export file, folder or .zip; or the word `labelstudio` with --ls-project "
            "to pull from a live Label Studio server (same as `sync labelstudio`)."
        ),
    ],
    project: ProjectOpt,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="auto, labelstudio, cvat, coco, voc, yolo, labelme, "
            "masks or images (a folder, a file or a .zip; see docs/formats.md)",
        ),
    ] = "auto",
    skip_invalid: Annotated[
        bool,
        typer.Option(
            help="Ingest the valid records and report the rest, instead of failing whole."
        ),
    ] = False,
    label_map: Annotated[
        list[str] | None,
        typer.Option(help="Rename source labels: 'src=dst' (repeatable or comma-separated)."),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Folder that image references resolve against (default: the export's folder)."
        ),
    ] = None,
    label_config: Annotated[
        Path | None,
        typer.Option(
            help="Label Studio labeling config XML (needed for JSON-MIN exports; "
            "default: label_config.xml beside the export)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Pin these images to train, val or test in every future dataset version "
            "(e.g. a dataset's official test set)."
        ),
    ] = None,
    ls_project: Annotated[
        int | None,
        typer.Option(help="With PATH `labelstudio`: the Label Studio project id to pull."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="With PATH `labelstudio`: server URL (default: LABELLOOP_LABELSTUDIO_URL)."
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="With PATH `labelstudio`: ignore the last sync point."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Take annotations and images into the project: one transaction, idempotent.

    A bad record fails the whole ingest (nothing is written) and the error names the file,
    the record and the reason; --skip-invalid ingests the rest and lists what it skipped.
    `labelloop ingest labelstudio --ls-project ID` pulls only what changed on a live Label
    Studio server since the last pull (token from LABELLOOP_LABELSTUDIO_TOKEN)."""
    from labelloop.ingest import ingest_path
    from labelloop.ingest.formats import parse_label_map

    if str(path) == "labelstudio" and not path.exists():
        if ls_project is None:
            raise InputError(
                "`ingest labelstudio` needs --ls-project ID (the Label Studio project)"
            )
        from labelloop.cli.sync import run_labelstudio_sync

        run_labelstudio_sync(
            project,
            ls_project,
            url=url,
            label_map=label_map,
            skip_invalid=skip_invalid,
            full=full,
            source=None,
            as_json=as_json,
        )
        return
    if ls_project is not None or url is not None:
        raise InputError("--ls-project and --url go with `ingest labelstudio`, not with a PATH")
    ctx = context()
    with progress("ingest", None, _interactive(as_json)) as update:
        report = ingest_path(
            ctx,
            project,
            path,
            fmt=fmt,
            skip_invalid=skip_invalid,
            label_map=parse_label_map(label_map),
            image_root=image_root,
            label_config=label_config,
            split=split,
            on_record=lambda n: update(n, None, ""),
        )
    data = report.to_dict()
    if as_json:
        emit_json(data)
        return
    console.print(
        f"{path} ({report.format}): {report.records} records, "
        f"{report.images_new} new images ({report.images_existing} known), "
        f"{report.annotations_new} new annotations "
        f"({report.annotations_unchanged} unchanged), {report.unlabeled} unlabeled"
    )
    render_ingest_details(report, console, err_console)


@dataset_app.command("freeze")
@handle_errors
def dataset_freeze(
    project: ProjectOpt,
    seed: Annotated[
        int | None, typer.Option(help="Split seed (default: LABELLOOP_SPLIT_SEED).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Freeze the current labels as a dataset version (unchanged data returns the existing one)."""
    from labelloop.datasets.freeze import freeze

    result = freeze(context(), project, seed=seed)
    data = {
        "dataset_version_id": result.dataset_version_id,
        "number": result.number,
        "content_hash": result.content_hash,
        "created": result.created,
        **result.stats,
    }
    if as_json:
        emit_json(data)
    else:
        state = "new" if result.created else "unchanged, existing"
        console.print(
            f"dataset version {result.number} ({state}; {result.content_hash[:12]}): "
            f"{result.stats['images']} images, splits {result.stats['splits']}"
        )


def _latest_dataset(ctx: Context, project: str, number: int | None) -> int:
    from sqlalchemy import select

    from labelloop.db.models import DatasetVersion
    from labelloop.errors import NotFoundError
    from labelloop.projects import get_project

    with ctx.db.session() as s:
        p = get_project(s, project)
        q = select(DatasetVersion.id).where(DatasetVersion.project_id == p.id)
        q = q.where(DatasetVersion.number == number) if number else q
        dv = s.scalar(q.order_by(DatasetVersion.number.desc()).limit(1))
    if dv is None:
        raise NotFoundError(
            f"project {project!r} has no dataset version"
            f"{f' {number}' if number else ''}; run `labelloop dataset freeze`"
        )
    return dv


@app.command()
@handle_errors
def train(
    project: ProjectOpt,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    dataset_version: Annotated[
        int | None,
        typer.Option("--dataset-version", help="Dataset version number (default: the latest)."),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe YAML file.", exists=True, dir_okay=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on a frozen dataset version; the same version and recipe never train twice."""
    from labelloop.projects import get_project
    from labelloop.runs import execute_run, request_run
    from labelloop.training.recipe import parse_recipe_text

    ctx = context()
    dv = _latest_dataset(ctx, project, dataset_version)
    with ctx.db.session() as s:
        task = get_project(s, project).task
    rec = parse_recipe_text(recipe.read_text(), task) if recipe else None
    overrides = {"epochs": epochs} if epochs else None
    req = request_run(ctx, dv, rec, overrides=overrides)
    mv_id = req.model_version_id
    if mv_id is None:
        from labelloop.locks import project_lock

        # The workers' lock: a CLI training never runs beside a worker's for this project.
        with (
            project_lock(ctx.settings, project) as held,
            progress("train", None, _interactive(as_json)) as update,
        ):

            def on_progress(p: dict) -> None:
                held.check()
                total = p.get("epochs")
                info = f"loss {p['loss']:.3f}" if isinstance(p.get("loss"), float) else ""
                update(int(p.get("epoch", 0)), total, info)

            mv_id = execute_run(ctx, req.run_id, on_progress=on_progress)
    from labelloop.reports import project_status

    st = project_status(ctx, project)
    mv = next(m for m in st["model_versions"] if m["id"] == mv_id)
    if as_json:
        emit_json(
            {
                "training_run_id": req.run_id,
                "model_version": mv,
                "trained": req.model_version_id is None,
            }
        )
    else:
        metric = mv.get("primary_metric") or "mean_dice"
        value = (mv["metrics"] or {}).get(metric)
        shown = f"{value:.3f}" if isinstance(value, int | float) else "-"
        console.print(
            f"model version {mv['name']} ({mv['stage']}): test {metric} {shown}, "
            f"{mv['train_seconds']} s training"
        )


@app.command()
@handle_errors
def status(project: ProjectOpt, as_json: JsonOpt = False) -> None:
    """Images, annotations per class, dataset and model versions with metrics, rounds."""
    from labelloop.reports import project_status

    st = project_status(context(), project)
    if as_json:
        emit_json(st)
    else:
        render_status(st, console)


def _register_modules() -> None:
    from labelloop.cli import automation, models, rounds, simulate

    rounds.register(app)
    models.register(app)
    simulate.register(app)
    automation.register(app, project_app)


def _load_plugins() -> None:
    """Commands contributed by other packages of the distribution (e.g. the workers' demo),
    discovered by entry point so this package never imports them."""
    for ep in entry_points(group="labelloop.cli"):
        ep.load()(app)


_register_modules()
_load_plugins()
