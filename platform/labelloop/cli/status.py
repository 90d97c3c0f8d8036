"""`labelloop status`: a project at a glance (the same dict as `status --json`)."""

from __future__ import annotations

import typer

from labelloop.cli.options import JsonOpt, ProjectOpt, context
from labelloop.cli.output import console, emit_json, handle_errors
from labelloop.cli.render import render_status

app = typer.Typer()


@app.command()
@handle_errors
def status(project: ProjectOpt, as_json: JsonOpt = False) -> None:
    """Images, annotations per class, dataset and model versions with metrics, rounds;
    warns under the model table when a version's counts cannot be trusted (old count
    metrics, instance rules resting on fewer than 10 annotated objects of a class, test
    counts of a class no better than a constant count per image, or count intervals that
    held below 80 % on the test split)."""
    from labelloop.reports import project_status

    st = project_status(context(), project)
    if as_json:
        emit_json(st)
    else:
        render_status(st, console)
