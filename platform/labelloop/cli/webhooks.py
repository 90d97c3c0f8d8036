"""`labelloop webhooks register`: Label Studio webhooks that start retraining."""

from __future__ import annotations

import typer

from labelloop.cli.options import (
    JsonOpt,
    LsLabelMapOpt,
    LsProjectOpt,
    LsUrlOpt,
    ProjectOpt,
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
    as_json: JsonOpt = False,
) -> None:
    """Create (or update) the webhook in Label Studio and link its project as a source
    the pipeline syncs. Label Studio sends LABELLOOP_WEBHOOK_SECRET back in a header;
    the token comes from LABELLOOP_LABELSTUDIO_TOKEN."""
    from labelloop.ingest.formats import parse_label_map
    from labelloop.pipelines.webhooks import register_webhook

    result = register_webhook(
        context(),
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
