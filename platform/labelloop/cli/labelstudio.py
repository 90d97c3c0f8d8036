"""`labelloop labelstudio connect`: a Label Studio project wired to labelloop in one step."""

from __future__ import annotations

import typer

from labelloop.cli.options import (
    JsonOpt,
    LsLabelMapOpt,
    LsProjectOpt,
    LsUrlOpt,
    ProjectOpt,
    ProjectSecretOpt,
    ServeUrlOpt,
    context,
)
from labelloop.cli.output import console, emit_json, handle_errors

app = typer.Typer(help="Connect Label Studio projects.", no_args_is_help=True)


@app.command("connect")
@handle_errors
def labelstudio_connect(
    project: ProjectOpt,
    ls_project: LsProjectOpt,
    url: ServeUrlOpt,
    ls_url: LsUrlOpt = None,
    label_map: LsLabelMapOpt = None,
    project_secret: ProjectSecretOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the Label Studio URL and token, then register labelloop as the project's ML
    backend (Settings -> Model: predictions of the production model for any task, on
    demand) and its annotation webhook (retraining), and link it as a source. The token
    is LABELLOOP_LABELSTUDIO_TOKEN: a personal access token (avatar -> Account &
    Settings) or a legacy token; Label Studio authenticates back with the project's
    webhook secret (--project-secret: a new one of its own; --shared-secret:
    LABELLOOP_WEBHOOK_SECRET; by default whichever the project uses). `labelloop serve`
    must be running at --url."""
    from labelloop.ingest.formats import parse_label_map
    from labelloop.pipelines.webhooks import connect_labelstudio

    result = connect_labelstudio(
        context(),
        project,
        ls_project=ls_project,
        base_url=url,
        ls_url=ls_url,
        label_map=parse_label_map(label_map),
        own_secret=project_secret,
    )
    if as_json:
        emit_json(result)
    else:
        ml, hook = result["ml_backend"], result["webhook"]
        console.print(
            f"connected {result['ls_url']} project {ls_project} (as {result['user']}): "
            f"ML backend {ml['id']} -> {ml['url']}, webhook {hook['id']} -> {hook['url']} "
            f"({result['secret']} webhook secret)"
        )
