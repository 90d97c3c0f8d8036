"""`labelloop sync ...`: pull annotations from a live labeling server (incremental).

A group of its own rather than an `ingest` option: `ingest` reads a PATH, a sync reads a
server and remembers where it stopped."""

from __future__ import annotations

from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt, ProjectOpt, context, interactive
from labelloop.cli.output import console, emit_json, err_console, handle_errors, progress
from labelloop.cli.render import render_ingest_details

app = typer.Typer(
    help="Pull annotations from a live labeling server; only what changed since the last sync.",
    no_args_is_help=True,
)


@app.command("labelstudio")
@handle_errors
def sync_labelstudio_cmd(
    project: ProjectOpt,
    ls_project: Annotated[int, typer.Option("--ls-project", help="Label Studio project id.")],
    url: Annotated[
        str | None,
        typer.Option(help="Label Studio URL (default: LABELLOOP_LABELSTUDIO_URL)."),
    ] = None,
    label_map: Annotated[
        list[str] | None,
        typer.Option(
            help="Rename Label Studio classes: 'src=dst' (repeatable or comma-separated)."
        ),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option(help="Ingest the valid tasks and report the rest, instead of failing whole."),
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Ignore the last sync point and pull every task.")
    ] = False,
    source: Annotated[
        str | None,
        typer.Option(
            help="Source name (default: the project's URL). Use 'labelstudio:project-<id>' to "
            "continue from JSON exports of the same project ingested before."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pull the tasks updated since the last sync from a Label Studio project.

    One transaction: edited annotations become new revisions, cancelled and deleted ones
    stop counting, and the sync point moves only when everything was written. The token
    comes from LABELLOOP_LABELSTUDIO_TOKEN (never a flag, so it stays out of shell history)."""
    run_labelstudio_sync(
        project,
        ls_project,
        url=url,
        label_map=label_map,
        skip_invalid=skip_invalid,
        full=full,
        source=source,
        as_json=as_json,
    )


def run_labelstudio_sync(
    project: str,
    ls_project: int,
    *,
    url: str | None,
    label_map: list[str] | None,
    skip_invalid: bool,
    full: bool,
    source: str | None,
    as_json: bool,
) -> None:
    """The sync behind both `sync labelstudio` and `ingest labelstudio`."""
    from labelloop.ingest.formats import parse_label_map
    from labelloop.labelstudio.sync import sync_labelstudio

    ctx = context()
    with progress("sync", None, interactive(as_json)) as update:
        report = sync_labelstudio(
            ctx,
            project,
            url or ctx.settings.labelstudio_url,
            ls_project,
            label_map=parse_label_map(label_map),
            skip_invalid=skip_invalid,
            full=full,
            source=source,
            on_progress=lambda done, total: update(done, total),
        )
    if as_json:
        emit_json(report.to_dict())
        return
    ing = report.ingest
    console.print(
        f"{report.ls_url} project {report.ls_project} ({report.ls_title}): "
        f"{report.tasks_fetched} tasks fetched, {len(report.changed_task_ids)} changed; "
        f"{ing.annotations_new} new annotation revisions ({ing.annotations_unchanged} "
        f"unchanged, {ing.annotations_cancelled} cancelled), {report.annotations_deleted} "
        f"deleted upstream; {ing.images_new} new images"
    )
    render_ingest_details(ing, console, err_console)
