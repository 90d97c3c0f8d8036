"""`labelloop webhooks register`: Label Studio webhooks that start retraining."""

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

app = typer.Typer(help="Label Studio webhooks that trigger retraining.", no_args_is_help=True)


@app.command("register")
@handle_errors
def webhooks_register(
    project: ProjectOpt,
    ls_project: LsProjectOpt,
    url: ServeUrlOpt,
    ls_url: LsUrlOpt = None,
    label_map: LsLabelMapOpt = None,
    project_secret: ProjectSecretOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create (or update) the webhook in Label Studio and link its project as a source
    the pipeline syncs. Label Studio sends the project's webhook secret back in a header:
    with --project-secret a new secret of the project's own (only its sha256 is kept; it
    works for no other project), with --shared-secret LABELLOOP_WEBHOOK_SECRET, by default
    whichever the project uses (its own is then renewed: it cannot be read back, so run
    `labelstudio connect` instead when Label Studio also uses labelloop as ML backend).
    The Label Studio token comes from LABELLOOP_LABELSTUDIO_TOKEN."""
    from labelloop.ingest.formats import parse_label_map
    from labelloop.pipelines.webhooks import register_webhook

    result = register_webhook(
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
        verb = "registered" if result["created"] else "updated"
        console.print(
            f"webhook {result['webhook_id']} {verb} in {result['ls_url']} project "
            f"{ls_project} -> {result['url']} ({result['secret']} webhook secret)"
        )


@app.command("events")
@handle_errors
def webhooks_events(project: ProjectOpt, as_json: JsonOpt = False) -> None:
    """Annotation events received but not yet taken into account by a pipeline run."""
    from labelloop.pipelines.triggers import effective_triggers
    from labelloop.pipelines.webhooks import pending_events
    from labelloop.projects import get_project

    ctx = context()
    events = pending_events(ctx, project)
    if as_json:
        emit_json(events)
        return
    with ctx.db.session() as s:
        threshold = effective_triggers(get_project(s, project), ctx.settings).min_annotations
    total = sum(e["annotations"] for e in events)
    console.print(
        f"{len(events)} pending event(s), {total} annotation(s); a retrain starts at {threshold}"
    )
    for e in events:
        console.print(
            f"  {e['id']}  {e['received_at']}  {e['action']}  annotations {e['annotation_ids']}"
        )
