"""The `labelstudio` push target: a round's images become tasks in a Label Studio project,
with the model's predictions, a Data Manager tab per round (and per annotator batch) and
the model version shown by default. `round_files` gives the same tasks as an import file
for the `file` target.

Predictions carry `model_version` and a `score`; Label Studio sorts by prediction score,
and annotators should meet the least confident images first, so the pushed score is the
model's confidence (1 - normalised uncertainty) and the raw uncertainty travels as the
task field `uncertainty`.

Images are UPLOADED by default. A task that points at a path on our side (a
`/data/local-files/?d=...` URL) only displays when Label Studio runs with local-file
serving enabled, shares our filesystem and has a Local Files storage on that project
whose folder holds the file; an uploaded file needs none of that and keeps working when
our blob store moves. Callers that do have such a setup (or a URL the browser can reach)
pass `image_url_for(key)` and nothing is uploaded.

Uploads go through `POST /api/projects/{id}/import?commit_to_project=false`, which stores
the files without making tasks; the tasks are then created in one JSON import that
already carries every data field and the prediction. A task therefore never exists
without its `labelloop_key`, so an interrupted push leaves at most orphan files, never a
task that a retry could not recognise.

Idempotence: every task carries `data.labelloop_key` (our stable image key). A push first
looks the keys up in the project and reuses those tasks: their extra data fields are
updated in place, and a prediction with the same `model_version` is replaced (updated),
never duplicated; a prediction with a new model_version is added beside older ones, so
the labeling interface can still show earlier rounds.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select

from labelloop.context import Context
from labelloop.db.models import AnnotationRound, Project, Push
from labelloop.domain import Mask, Shape
from labelloop.errors import ConfigError, ExternalServiceError, InputError
from labelloop.geometry import mask_polygons
from labelloop.labelstudio.client import PAGE_SIZE, LabelStudioClient
from labelloop.labelstudio.convert import shapes_to_results
from labelloop.labelstudio.label_config import CONTROL_KINDS, parse_label_config, task_label_config
from labelloop.labelstudio.tabs import (
    PREDICTED_PREFIX,
    ensure_view,
    remove_closed_tabs,
    round_view_data,
)
from labelloop.push.stage import (
    PushOptions,
    PushResult,
    RoundBatch,
    TaskSpec,
    record_push,
    round_batch,
)

log = logging.getLogger(__name__)

KEY_FIELD = "labelloop_key"
DEFAULT_IMAGE_FIELD = "image"
# Keys per lookup query: the filter travels in the URL, which proxies cap at about 8 KB.
LOOKUP_BATCH = 20
# Django refuses more than 100 files per request by default; stay well below, and below
# a request size that proxies accept.
UPLOAD_BATCH_FILES = 50
UPLOAD_BATCH_BYTES = 64 * 1024 * 1024


T = TypeVar("T")


@dataclass
class PushTask:
    """One image to label. `prediction` is {"result": [...], "score": float,
    "model_version": str} with `result` in Label Studio's format, or None."""

    key: str
    filename: str
    image_bytes: bytes
    data_extra: dict[str, Any] = field(default_factory=dict)
    prediction: dict[str, Any] | None = None


# -- a round as Label Studio tasks ----------------------------------------------------------


def push_to_labelstudio(ctx: Context, round_id: int, options: PushOptions) -> PushResult:
    """Create (or reuse) tasks in a Label Studio project and attach the predictions."""
    url = options.url or ctx.settings.labelstudio_url
    token = options.token or ctx.settings.labelstudio_token.get_secret_value()
    if not url or not token:
        raise ConfigError(
            "Label Studio push needs LABELLOOP_LABELSTUDIO_URL and "
            "LABELLOOP_LABELSTUDIO_TOKEN (the URL may also come from --ls-url)"
        )
    batch = round_batch(ctx, round_id)
    number, mv_name, specs = batch.number, batch.model_version, batch.specs
    config, results = _round_results(batch)
    client = LabelStudioClient(url, token)
    ls_project = client.ensure_project(options.title or f"labelloop {batch.project}", config)
    tasks = [
        PushTask(
            key=spec.sha256,
            filename=spec.file_name,
            image_bytes=ctx.blobs.get_bytes(spec.blob_key),
            data_extra=task_fields(spec, number, batch.labels),
            prediction=_prediction(spec, result, mv_name),
        )
        for spec, result in zip(specs, results, strict=True)
    ]
    key_to_task = push_tasks(client, ls_project, tasks)
    id_map = {spec.image_id: str(key_to_task[spec.sha256]) for spec in specs}
    # Annotators open the round's tab and meet the images in the strategy's order; with
    # several annotator batches, each gets a tab of its own. Closed rounds' tabs go.
    batches = sorted({spec.batch for spec in specs})
    views = [ensure_view(client, ls_project, round_view_data(number, batch.labels))]
    if len(batches) > 1:
        views += [
            ensure_view(client, ls_project, round_view_data(number, batch.labels, b))
            for b in batches
        ]
    remove_closed_tabs(client, ls_project, closed_rounds(ctx, round_id))
    destination = f"{url.rstrip('/')}/projects/{ls_project}"
    push_id = record_push(ctx, round_id, "labelstudio", destination, id_map)
    return PushResult(push_id, "labelstudio", destination, number, mv_name, id_map, views)


def refresh_open_rounds(
    ctx: Context,
    project_name: str,
    model_version_id: int,
    *,
    url: str | None = None,
    token: str | None = None,
) -> list[int]:
    """Give the tasks of the project's open rounds already in Label Studio the predictions
    of `model_version_id` (the newly promoted model) and make it the project's model
    version. Label Studio shows a task's score only for the project's current model
    version, so without this, older rounds' tasks lose theirs at every push; with it,
    annotators always see the best model's predictions. Idempotent (a prediction of the
    same version is replaced); rounds of other Label Studio projects are left alone.
    Returns the refreshed rounds' numbers."""
    url = (url or ctx.settings.labelstudio_url).rstrip("/")
    token = token or ctx.settings.labelstudio_token.get_secret_value()
    prefix = f"{url}/projects/"
    with ctx.db.session() as s:
        rows = s.execute(
            select(AnnotationRound.id, AnnotationRound.number, Push.destination)
            .join(Push, Push.round_id == AnnotationRound.id)
            .join(Project, Project.id == AnnotationRound.project_id)
            .where(
                Project.name == project_name,
                AnnotationRound.status == "open",
                Push.target == "labelstudio",
            )
            .order_by(AnnotationRound.number, Push.id)
        ).all()
    targets = {(rid, number, dest) for rid, number, dest in rows if dest.startswith(prefix)}
    if not targets:
        return []
    client = LabelStudioClient(url, token)
    done = []
    for round_id, number, dest in sorted(targets, key=lambda r: r[1]):
        batch = round_batch(ctx, round_id, model_version_id)
        _, results = _round_results(batch)
        tasks = [
            PushTask(
                key=spec.sha256,
                filename=spec.file_name,
                image_bytes=ctx.blobs.get_bytes(spec.blob_key),
                data_extra=task_fields(spec, number, batch.labels),
                prediction=_prediction(spec, result, batch.model_version),
            )
            for spec, result in zip(batch.specs, results, strict=True)
        ]
        push_tasks(client, int(dest.rsplit("/", 1)[1]), tasks)
        done.append(number)
    return done


def round_files(batch: RoundBatch) -> dict[str, str]:
    """The round folder's Label Studio import: `tasks.json` (tasks with predictions,
    images as local-file URLs under the folder) and the `label_config.xml` they fit."""
    config, results = _round_results(batch)
    tasks = []
    for spec, result in zip(batch.specs, results, strict=True):
        task: dict[str, Any] = {
            "data": {
                "image": f"/data/local-files/?d=images/{spec.file_name}",
                **task_fields(spec, batch.number, batch.labels),
            }
        }
        prediction = _prediction(spec, result, batch.model_version)
        if prediction:
            task["predictions"] = [prediction]
        tasks.append(task)
    return {"tasks.json": json.dumps(tasks, indent=1), "label_config.xml": config}


def controls_for(config_xml: str) -> tuple[dict[str, str], str]:
    """Map canonical shape kinds to the config's control names, and the image name."""
    cfg = parse_label_config(config_xml)
    controls: dict[str, str] = {}
    for c in cfg.controls:
        kind = CONTROL_KINDS.get(c.type.lower())
        if kind and kind not in controls:
            controls[kind] = c.name
    return controls, cfg.to_name_default


def _round_results(batch: RoundBatch) -> tuple[str, list[list[dict]]]:
    """The labeling config a round's project gets (its labels, a control per shape kind
    of its task) and, per spec, the prediction as results of that config."""
    config = task_label_config(batch.labels, batch.task, batch.draw)
    controls, to_name = controls_for(config)
    results = [
        shapes_to_results(
            drawable(sp.shapes, controls), sp.width, sp.height, controls=controls, to_name=to_name
        )
        if sp.shapes
        else []
        for sp in batch.specs
    ]
    return config, results


def drawable(shapes: Sequence[Shape], controls: dict[str, str]) -> list[Shape]:
    """The prediction in the tool the project draws with: a predicted mask becomes
    polygons when the config has a polygon control and no brush."""
    if "mask" in controls or "polygon" not in controls:
        return list(shapes)
    out: list[Shape] = []
    for s in shapes:
        out += mask_polygons(s) if isinstance(s, Mask) else [s]
    return out


def _prediction(spec: TaskSpec, result: list[dict], model_version: str | None) -> dict | None:
    """The task's prediction. An image the model read and found nothing in still gets one
    (no regions, with its model version and score): "found nothing" must not look like
    "no model". Only an image no model scored gets none."""
    unc = spec.uncertainty if spec.prediction_uncertainty is None else spec.prediction_uncertainty
    if not result and unc is None:
        return None
    return {"model_version": model_version, "score": confidence(unc), "result": result}


def confidence(uncertainty: float | None) -> float | None:
    """The task-level score: 1 − the round's uncertainty, i.e. how sure the model is of its
    whole reading of the image under the method the round is ranked by. It is not an
    average of the region scores: each region carries its own (the model's belief that
    it is a cell of that class), and e.g. for detection's `least_confidence_max` the task
    score is how far the most doubtful region is from a coin flip, so regions all at
    0.06-0.12 (likely not cells) give a task score of about 0.76. Tasks sort by it."""
    return None if uncertainty is None else round(max(0.0, min(1.0, 1.0 - uncertainty)), 6)


def task_fields(spec: TaskSpec, number: int, labels: Sequence[str] = ()) -> dict:
    """Task data fields every push sets: our ids, and what annotators sort and filter by
    (rank, uncertainty to 3 digits, the predicted count of each class)."""
    return {
        "labelloop_image_id": spec.image_id,
        "labelloop_round": number,
        "labelloop_batch": spec.batch,
        "rank": spec.rank,
        "uncertainty": None if spec.uncertainty is None else round(spec.uncertainty, 3),
        **{PREDICTED_PREFIX + lab: int(spec.counts.get(lab, 0)) for lab in labels},
    }


def closed_rounds(ctx: Context, round_id: int) -> set[int]:
    """Numbers of the round's project's closed rounds (every image annotated)."""
    with ctx.db.session() as s:
        project_id = s.get(AnnotationRound, round_id).project_id
        return set(
            s.scalars(
                select(AnnotationRound.number).where(
                    AnnotationRound.project_id == project_id, AnnotationRound.status != "open"
                )
            )
        )


# -- tasks, predictions, tabs -------------------------------------------------------------


def push_tasks(
    client: LabelStudioClient,
    project_id: int,
    tasks: Sequence[PushTask],
    *,
    image_url_for: Callable[[str], str] | None = None,
) -> dict[str, int]:
    """Create or reuse one task per PushTask; returns key -> Label Studio task id."""
    _check_tasks(tasks)
    if not tasks:
        return {}
    image_field = _image_field(client, project_id)
    for t in tasks:
        clash = {KEY_FIELD, image_field} & set(t.data_extra)
        if clash:
            raise InputError(f"data_extra may not set {sorted(clash)}", record=t.key)
    existing = _lookup(client, project_id, [t.key for t in tasks])
    fresh = [t for t in tasks if t.key not in existing]
    for t in tasks:
        if t.key in existing:
            _refresh_task(client, *existing[t.key], t)
    if fresh:
        urls = (
            {t.key: image_url_for(t.key) for t in fresh}
            if image_url_for
            else _upload(client, project_id, fresh)
        )
        _create_tasks(client, project_id, fresh, urls, image_field)
    ids = find_tasks(client, project_id, [t.key for t in tasks])
    missing = [t.key for t in tasks if t.key not in ids]
    if missing:
        raise ExternalServiceError(
            f"Label Studio at {client.url} did not create tasks for {len(missing)} image(s) "
            f"in project {project_id}, e.g. {missing[0]}"
        )
    versions = [t.prediction["model_version"] for t in tasks if t.prediction]
    if versions:
        _set_model_version(client, project_id, versions[-1])
    return {t.key: ids[t.key] for t in tasks}


def find_tasks(client: LabelStudioClient, project_id: int, keys: Sequence[str]) -> dict[str, int]:
    """key -> task id for the keys that already have a task (the oldest one wins)."""
    return {k: task_id for k, (task_id, _) in _lookup(client, project_id, keys).items()}


def _lookup(
    client: LabelStudioClient, project_id: int, keys: Sequence[str]
) -> dict[str, tuple[int, dict]]:
    """key -> (task id, task data), queried by data.labelloop_key in small batches."""
    found: dict[str, tuple[int, dict]] = {}
    unique = list(dict.fromkeys(keys))
    for batch in _chunks(unique, LOOKUP_BATCH):
        query = json.dumps(
            {
                "filters": {
                    "conjunction": "or",
                    "items": [
                        {
                            "filter": f"filter:tasks:data.{KEY_FIELD}",
                            "operator": "equal",
                            "type": "String",
                            "value": k,
                        }
                        for k in batch
                    ],
                }
            }
        )
        rows = client.call(
            f"GET /api/tasks?project={project_id}",
            lambda q=query: [
                (t.id, dict(t.data or {}))
                for t in client.sdk.tasks.list(
                    project=project_id,
                    query=q,
                    fields="task_only",
                    include="id,data",
                    page_size=PAGE_SIZE,
                )
                if t.id is not None
            ],
        )
        for task_id, data in sorted(rows, key=lambda row: row[0]):
            key = data.get(KEY_FIELD)
            if key in batch and key not in found:
                found[key] = (task_id, data)
    return found


def _image_field(client: LabelStudioClient, project_id: int) -> str:
    config = client.call(
        f"GET /api/projects/{project_id}",
        lambda: client.sdk.projects.get(project_id).label_config,
    )
    images = parse_label_config(config).images if config else ()
    return images[0].data_key if images else DEFAULT_IMAGE_FIELD


def _upload(
    client: LabelStudioClient, project_id: int, tasks: Sequence[PushTask]
) -> dict[str, str]:
    """Store the image files in the project; key -> URL for task data."""
    urls: dict[str, str] = {}
    batches: list[list[PushTask]] = [[]]
    size = 0
    for t in tasks:
        if batches[-1] and (
            len(batches[-1]) >= UPLOAD_BATCH_FILES or size + len(t.image_bytes) > UPLOAD_BATCH_BYTES
        ):
            batches.append([])
            size = 0
        batches[-1].append(t)
        size += len(t.image_bytes)
    for batch in batches:
        files = {
            f"file_{i}": (
                t.filename,
                t.image_bytes,
                mimetypes.guess_type(t.filename)[0] or "image/png",
            )
            for i, t in enumerate(batch)
        }
        reply = client.post_files(
            f"api/projects/{project_id}/import", files, params={"commit_to_project": False}
        )
        upload_ids = reply.get("file_upload_ids") or []
        if len(upload_ids) != len(batch):
            raise ExternalServiceError(
                f"Label Studio at {client.url} stored {len(upload_ids)} of {len(batch)} files "
                f"in project {project_id}"
            )
        uploads = client.call(
            f"GET /api/projects/{project_id}/file-uploads",
            lambda ids=upload_ids: client.sdk.files.list(project_id, ids=json.dumps(ids)),
        )
        names = {u.id: u.file for u in uploads}
        for t, upload_id in zip(batch, upload_ids, strict=True):
            if upload_id not in names:
                raise ExternalServiceError(
                    f"Label Studio at {client.url} lost uploaded file {upload_id} "
                    f"({t.filename}) in project {project_id}"
                )
            # Label Studio serves uploads at MEDIA_URL ("/data/") + the stored name.
            urls[t.key] = f"{client.base_path}/data/{names[upload_id].lstrip('/')}"
    return urls


def _create_tasks(
    client: LabelStudioClient,
    project_id: int,
    tasks: Sequence[PushTask],
    urls: dict[str, str],
    image_field: str,
) -> None:
    payload = []
    for t in tasks:
        item: dict[str, Any] = {
            "data": {**t.data_extra, image_field: urls[t.key], KEY_FIELD: t.key}
        }
        if t.prediction:
            item["predictions"] = [_prediction_fields(t.prediction)]
        payload.append(item)
    for batch in _chunks(payload, 500):
        client.call(
            f"POST /api/projects/{project_id}/import",
            lambda b=batch: client.sdk.projects.import_tasks(
                project_id, request=b, return_task_ids=True
            ),
        )


def _refresh_task(
    client: LabelStudioClient, task_id: int, data: dict[str, Any], t: PushTask
) -> None:
    """Bring a reused task's extra fields and prediction up to date."""
    merged = {**data, **t.data_extra}
    if merged != data:
        client.call(
            f"PATCH /api/tasks/{task_id}",
            lambda: client.sdk.tasks.update(str(task_id), data=merged),
        )
    if not t.prediction:
        return
    fields = _prediction_fields(t.prediction)
    current = client.call(
        f"GET /api/predictions?task={task_id}",
        lambda: client.sdk.predictions.list(task=task_id),
    )
    same = sorted(
        p.id for p in current if p.model_version == fields["model_version"] and p.id is not None
    )
    if not same:
        client.call(
            "POST /api/predictions",
            lambda: client.sdk.predictions.create(task=task_id, **fields),
        )
        return
    client.call(
        f"PATCH /api/predictions/{same[0]}",
        lambda: client.sdk.predictions.update(
            same[0], result=fields["result"], score=fields["score"]
        ),
    )
    for extra in same[1:]:
        client.call(
            f"DELETE /api/predictions/{extra}",
            lambda e=extra: client.sdk.predictions.delete(e),
        )


def _set_model_version(client: LabelStudioClient, project_id: int, version: str) -> None:
    """Show this version's predictions by default; Label Studio only accepts versions
    that exist as predictions or live models, so a refusal is logged, not raised."""
    try:
        client.call(
            f"PATCH /api/projects/{project_id}",
            lambda: client.sdk.projects.update(project_id, model_version=version),
        )
    except ExternalServiceError as exc:
        log.warning("project %s keeps its model_version: %s", project_id, exc)


def _check_tasks(tasks: Sequence[PushTask]) -> None:
    seen: set[str] = set()
    for t in tasks:
        if not t.key:
            raise InputError("empty task key", record=t.filename)
        if t.key in seen:
            raise InputError("the same key appears twice in one push", record=t.key)
        seen.add(t.key)
        if not t.image_bytes:
            raise InputError("image is empty", file=t.filename, record=t.key)
        if t.prediction is not None:
            missing = {"result", "score", "model_version"} - set(t.prediction)
            if missing:
                raise InputError(f"prediction lacks {sorted(missing)}", record=t.key)


def _prediction_fields(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "result": list(p["result"]),
        "score": float(p["score"]),
        "model_version": str(p["model_version"]),
    }


def _chunks(items: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
