"""`labelloop ingest PATH`: annotations and images from export files into a project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt, ProjectOpt, context, interactive
from labelloop.cli.output import console, emit_json, err_console, handle_errors, progress
from labelloop.cli.render import render_dry_run, render_ingest_details
from labelloop.cli.sync import run_labelstudio_sync
from labelloop.errors import InputError

app = typer.Typer()


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
            help="auto, labelstudio, cvat, coco, voc, yolo-obb, yolo, labelme, createml, "
            "object-masks, masks, folders (one folder per class) or images (a folder, a file "
            "or a .zip; see docs/formats.md). `images` ingests the images alone, even beside "
            "annotation files auto refuses.",
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
    source: Annotated[
        str | None,
        typer.Option(
            help="Name of the source the input comes from (default: derived from the "
            "export, e.g. its Label Studio project). Two exports whose ids overlap but "
            "that hold different images need different names."
        ),
    ] = None,
    edit: Annotated[
        bool,
        typer.Option(
            "--edit",
            help="Accept records whose image changed since the last ingest of this source "
            "(the image was replaced upstream); without it such a record is refused.",
        ),
    ] = False,
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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Read and check everything, print per file what would be ingested (images, "
            "shapes per kind and label, skipped records with the reason), write nothing; "
            "exit 2 when a record would fail the ingest (unless --skip-invalid).",
        ),
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
        if dry_run:
            raise InputError(
                "--dry-run checks files; a live Label Studio pull cannot be dry-run: export "
                "the project to a file and check that"
            )
        if ls_project is None:
            raise InputError(
                "`ingest labelstudio` needs --ls-project ID (the Label Studio project)"
            )
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
        return
    if ls_project is not None or url is not None:
        raise InputError("--ls-project and --url go with `ingest labelstudio`, not with a PATH")
    ctx = context()
    with progress("ingest", None, interactive(as_json)) as update:
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
            source=source,
            edit=edit,
            on_record=lambda n: update(n, None, ""),
            dry_run=dry_run,
        )
    data = report.to_dict()
    # The check answers as the ingest would: `ingest --dry-run && ingest` is safe.
    would_fail = len(report.skipped) if dry_run and not skip_invalid else 0
    if as_json:
        emit_json({**data, "would_fail": would_fail} if dry_run else data)
        if would_fail:
            raise typer.Exit(2)  # one JSON document on stdout: the report says why
        return
    else:
        if dry_run:
            render_dry_run(report, console)
        console.print(
            ("dry run, nothing written: " if dry_run else "")
            + f"{path} ({report.format}): {report.records} records, "
            f"{report.images_new} new images ({report.images_existing} known), "
            f"{report.annotations_new} new annotations "
            f"({report.annotations_unchanged} unchanged), {report.unlabeled} unlabeled"
        )
        render_ingest_details(report, console, err_console)
    if would_fail:
        first = report.skipped[0]
        raise InputError(
            f"dry run: {len(report.skipped)} record(s) would fail the ingest, the first "
            f"{first.record}: {first.reason}; fix them, or pass --skip-invalid to ingest the rest",
            file=first.file,
        )
