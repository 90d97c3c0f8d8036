"""labelloop as a Label Studio ML backend: predictions for any task, on demand.

A Label Studio project connected under Settings → Model (`labelloop labelstudio connect`)
calls, below `<labelloop serve>/ml/<project>`:

- `GET /health`: is the backend up;
- `POST /setup`: the model version it would predict with (the project's production
  model), which Label Studio records as the project's model version;
- `POST /predict`: `{"tasks": [...], "label_config": ...}` -> `{"results": [one
  prediction per task]}`, when an annotator opens a task without a prediction or a
  manager runs "Retrieve predictions" in the Data Manager;
- `POST /webhook`: `START_TRAINING` ("Start training" in the model settings) queues a
  pipeline run, like the annotation webhook does.

Predictions always come from the production model (a candidate that lost the promotion
gate never reaches annotators) and are cached per (model version, image content): a
stored score of the same model and image is reused without running the model, a new
image runs the model once. Label Studio authenticates with basic auth whose password
is the project's webhook secret it already holds (its own, else `LABELLOOP_WEBHOOK_SECRET`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy import select

from labelloop.access import PUBLIC, ROLE_KEY, WEBHOOK
from labelloop.context import Context
from labelloop.db.models import Image, ModelVersion, Score
from labelloop.domain import Shape, shapes_from_json
from labelloop.errors import NotFoundError
from labelloop.imaging import decode_image
from labelloop.labelstudio.convert import shapes_to_results
from labelloop.labelstudio.export import image_reference
from labelloop.labelstudio.label_config import parse_label_config
from labelloop.labelstudio.push import KEY_FIELD, confidence, controls_for, drawable
from labelloop.labelstudio.remote import LabelStudioSource
from labelloop.labelstudio.webhooks import BASIC, verify_request_secret
from labelloop.projects import get_project
from labelloop.storage import sha256_bytes

CACHE_SIZE = 4096  # predictions kept in memory, per process


def backend_url(base_url: str, project_name: str) -> str:
    """The ML backend URL Label Studio is given for a project."""
    return f"{base_url.rstrip('/')}/ml/{quote(project_name, safe='')}"


@dataclass(frozen=True)
class Reading:
    """What the model made of one image: shapes in pixels, and the task-level score."""

    shapes: list[Shape]
    width: int
    height: int
    score: float | None


class PredictionCache:
    """(model version id, image sha256) -> Reading, least recently used dropped first."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[tuple[int, str], Reading] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, str]) -> Reading | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return found

    def put(self, key: tuple[int, str], reading: Reading) -> None:
        with self._lock:
            self._items[key] = reading
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_CACHE = PredictionCache()


def serving_model(ctx: Context, project_name: str) -> tuple[int, str, str]:
    """(id, name, task) of the project's production model; NotFoundError without one."""
    from labelloop.registry import production_model

    with ctx.db.session() as s:
        project = get_project(s, project_name)
        task, project_id = project.task, project.id
    mv_id = production_model(ctx, project_id)
    if mv_id is None:
        raise NotFoundError(f"project {project_name!r} has no production model yet")
    with ctx.db.session() as s:
        return mv_id, s.get(ModelVersion, mv_id).name, task


def predict_tasks(
    ctx: Context,
    project_name: str,
    tasks: list[dict[str, Any]],
    label_config: str,
    *,
    cache: PredictionCache = _CACHE,
) -> list[dict[str, Any]]:
    """One prediction per task ({"result", "score", "model_version"}), by the production
    model, in the tools of `label_config`."""
    mv_id, mv_name, task_kind = serving_model(ctx, project_name)
    config = parse_label_config(label_config)
    image_key = config.images[0].data_key if config.images else "image"
    controls, to_name = controls_for(label_config)
    readings: list[Reading | None] = [None] * len(tasks)
    todo: list[tuple[int, str, bytes]] = []  # (position, sha256, image bytes)
    with _Images(ctx) as images:
        for i, task in enumerate(tasks):
            sha, data = images.of(task, image_key)
            readings[i] = cache.get((mv_id, sha)) or _stored(ctx, mv_id, sha, task_kind)
            if readings[i] is None:
                todo.append((i, sha, data if data is not None else _blob(ctx, sha)))
            else:
                cache.put((mv_id, sha), readings[i])
    if todo:
        for (i, sha, _), reading in zip(todo, _run_model(ctx, mv_id, task_kind, todo), strict=True):
            readings[i] = reading
            cache.put((mv_id, sha), reading)
    out = []
    for reading in readings:
        assert reading is not None
        result = (
            shapes_to_results(
                drawable(reading.shapes, controls),
                reading.width,
                reading.height,
                controls=controls,
                to_name=to_name,
            )
            if reading.shapes
            else []
        )
        out.append({"result": result, "score": reading.score, "model_version": mv_name})
    return out


class _Images:
    """Task images for one request: a task we pushed names its image (`labelloop_key`)
    and is read from the blob store; any other is read from Label Studio, through one
    connection opened on first use."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._remote: LabelStudioSource | None = None

    def __enter__(self) -> _Images:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._remote is not None:
            self._remote.close()

    def of(self, task: dict, image_key: str) -> tuple[str, bytes | None]:
        """(sha256, the bytes, or None when the blob store has them)."""
        data = task.get("data") or {}
        key = data.get(KEY_FIELD)
        if isinstance(key, str) and len(key) == 64:
            with self.ctx.db.session() as s:
                if s.scalar(select(Image.id).where(Image.sha256 == key)) is not None:
                    return key, None
        ref = image_reference(task, image_key)
        if self._remote is None:
            settings = self.ctx.settings
            self._remote = LabelStudioSource(
                settings.labelstudio_url,
                settings.labelstudio_token.get_secret_value(),
                image_hosts=settings.labelstudio_image_hosts,
            )
        raw = self._remote.image_bytes(ref, file="Label Studio", record=f"task {task.get('id')}")
        return sha256_bytes(raw), raw


def _blob(ctx: Context, sha: str) -> bytes:
    with ctx.db.session() as s:
        key = s.scalar(select(Image.blob_key).where(Image.sha256 == sha))
    return ctx.blobs.get_bytes(key)


def _stored(ctx: Context, mv_id: int, sha: str, task_kind: str) -> Reading | None:
    """The score stage's prediction of this model for this image, when it made one."""
    from labelloop.scoring.stage import default_method

    with ctx.db.session() as s:
        row = s.execute(
            select(Score, Image)
            .join(Image, Image.id == Score.image_id)
            .where(
                Score.model_version_id == mv_id,
                Image.sha256 == sha,
                Score.method == default_method(task_kind),
            )
        ).first()
        if row is None or "shapes_key" not in (row[0].details or {}):
            return None
        sc, img = row
        key, value, width, height = sc.details["shapes_key"], sc.value, img.width, img.height
    shapes = shapes_from_json(json.loads(ctx.blobs.get_bytes(key)))
    return Reading(shapes, width, height, confidence(value))


def _run_model(
    ctx: Context, mv_id: int, task_kind: str, todo: list[tuple[int, str, bytes]]
) -> list[Reading]:
    from labelloop.registry import load_model_version
    from labelloop.scoring import get_method
    from labelloop.scoring.stage import default_method

    loaded = load_model_version(ctx, mv_id)
    scorer = get_method(default_method(task_kind), task_kind)
    arrays = [decode_image(raw, name=f"image {sha[:12]}") for _, sha, raw in todo]
    out = []
    for arr, pred in zip(arrays, loaded.predict(arrays), strict=True):
        try:
            score = confidence(scorer.score_prediction(pred))
        except Exception:  # a multi-pass method: the model's own confidence stands in
            score = round(float(pred.confidence), 6)
        out.append(Reading(pred.shapes, int(arr.shape[1]), int(arr.shape[0]), score))
    return out


# -- the router ---------------------------------------------------------------------------

basic = HTTPBasic(
    auto_error=False,
    description="password: the project's webhook secret (its own, else LABELLOOP_WEBHOOK_SECRET)",
)
# Label Studio sends the basic-auth user `labelloop labelstudio connect` registered; only
# the password (the webhook secret) is checked.
WEBHOOK_ACCESS = {ROLE_KEY: WEBHOOK}  # what the route needs (labelloop.api.auth.access)
PUBLIC_ACCESS = {ROLE_KEY: PUBLIC}


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


async def require_backend_auth(
    project: str, request: Request, credentials: HTTPBasicCredentials | None = Depends(basic)
) -> None:
    password = credentials.password if credentials else None
    state = request.scope.setdefault("state", {})
    await verify_request_secret(_ctx(request), state, project, password, BASIC)


router = APIRouter(prefix="/ml/{project}", tags=["ml backend"])


@router.get("/health", openapi_extra=PUBLIC_ACCESS, summary="Label Studio ML backend: health")
def health(project: str, request: Request) -> dict[str, Any]:
    """Up when the project exists (no auth: Label Studio's health check sends none when
    the backend has none configured, and this says nothing secret)."""
    with _ctx(request).db.session() as s:
        get_project(s, project)
    return {"status": "UP", "model_class": "labelloop"}


@router.post(
    "/setup",
    dependencies=[Depends(require_backend_auth)],
    openapi_extra=WEBHOOK_ACCESS,
    summary="Label Studio ML backend: setup",
)
def setup(project: str, request: Request, body: dict = Body(default_factory=dict)) -> dict:
    _, name, _ = serving_model(_ctx(request), project)
    return {"model_version": name}


@router.post(
    "/predict",
    dependencies=[Depends(require_backend_auth)],
    openapi_extra=WEBHOOK_ACCESS,
    summary="Label Studio ML backend: predictions for tasks",
)
def predict(project: str, request: Request, body: dict = Body(...)) -> dict:
    tasks = body.get("tasks") or []
    if not isinstance(tasks, list):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "tasks must be a list")
    config = body.get("label_config") or ""
    results = predict_tasks(_ctx(request), project, tasks, config)
    return {"results": results, "model_version": results[0]["model_version"] if results else None}


@router.post(
    "/webhook",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_backend_auth)],
    openapi_extra=WEBHOOK_ACCESS,
    summary="Label Studio ML backend: training events",
)
def webhook(project: str, request: Request, body: dict = Body(...)) -> dict:
    """`START_TRAINING` queues a pipeline run (or joins the active one), through the
    application's `ml_train(project)` hook; other events are acknowledged (annotation
    events reach the annotation webhook)."""
    action = body.get("action")
    if action != "START_TRAINING":
        return {"status": "ignored", "action": action}
    return {"status": "queued", **request.app.state.ml_train(project)}
