"""`labelloop dataset ...`: frozen dataset versions."""

from __future__ import annotations

from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt, ProjectOpt, context
from labelloop.cli.output import console, emit_json, handle_errors

app = typer.Typer(help="Frozen dataset versions.", no_args_is_help=True)


@app.command("freeze")
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
