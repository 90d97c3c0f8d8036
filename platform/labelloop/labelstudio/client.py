"""Push images and pre-annotations into a Label Studio project (label-studio-sdk 2.x).

Plain data in, plain data out: the caller records the returned key -> task id map.

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
from urllib.parse import urlparse

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.parse_error import ParsingError

from labelloop.errors import ExternalServiceError, InputError
from labelloop.labelstudio.label_config import parse_label_config

log = logging.getLogger(__name__)

KEY_FIELD = "labelloop_key"
DEFAULT_IMAGE_FIELD = "image"
# Keys per lookup query: the filter travels in the URL, which proxies cap at about 8 KB.
LOOKUP_BATCH = 20
# Django refuses more than 100 files per request by default; stay well below, and below
# a request size that proxies accept.
UPLOAD_BATCH_FILES = 50
UPLOAD_BATCH_BYTES = 64 * 1024 * 1024
PAGE_SIZE = 100

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


class LabelStudioSink:
    """A Label Studio server reached with an API token (legacy token or personal access
    token; the SDK exchanges the latter for access tokens itself)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30):
        self.url = url.rstrip("/")
        self._base_path = urlparse(self.url).path  # non-empty when served under a prefix
        self._client = self._call(
            "connect", lambda: LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        )

    # -- projects --------------------------------------------------------------------

    def ensure_project(self, title: str, label_config: str) -> int:
        """The id of the oldest project with exactly this title, created when missing.

        An existing project keeps its own labeling config: changing it under existing
        annotations can fail or hide them, so that stays a deliberate manual step.
        """
        found = self._call(
            "GET /api/projects",
            lambda: [
                p.id
                for p in self._client.projects.list(title=title, page_size=PAGE_SIZE)
                if p.title == title and p.id is not None
            ],
        )
        if found:
            return min(found)
        created = self._call(
            "POST /api/projects",
            lambda: self._client.projects.create(title=title, label_config=label_config),
        )
        if created.id is None:
            raise ExternalServiceError(
                f"Label Studio at {self.url} created project {title!r} but returned no id"
            )
        return created.id

    # -- webhooks --------------------------------------------------------------------

    def ensure_webhook(
        self, project_id: int, url: str, *, actions: Sequence[str], headers: dict[str, str]
    ) -> tuple[int, bool]:
        """The project's webhook to `url`, created or brought up to date (payload on, these
        actions and headers, active); returns (webhook id, created)."""
        self._call(f"GET /api/projects/{project_id}", lambda: self._client.projects.get(project_id))
        hooks = self._call(
            "GET /api/webhooks", lambda: self._client.webhooks.list(project=str(project_id))
        )
        fields = {
            "url": url,
            "send_payload": True,
            "send_for_all_actions": False,
            "headers": dict(headers),
            "is_active": True,
            "actions": list(actions),
        }
        existing = next((h for h in hooks if h.url == url and h.project == project_id), None)
        if existing is not None and existing.id is not None:
            hook_id = existing.id
            self._call(
                f"PATCH /api/webhooks/{hook_id}",
                lambda: self._client.webhooks.update(hook_id, **fields),
            )
            return hook_id, False
        hook = self._call(
            "POST /api/webhooks",
            lambda: self._client.webhooks.create(project=project_id, **fields),
        )
        if hook.id is None:
            raise ExternalServiceError(
                f"Label Studio at {self.url} created a webhook without an id"
            )
        return hook.id, True

    # -- push ------------------------------------------------------------------------

    def push(
        self,
        project_id: int,
        tasks: Sequence[PushTask],
        *,
        image_url_for: Callable[[str], str] | None = None,
    ) -> dict[str, int]:
        """Create or reuse one task per PushTask; returns key -> Label Studio task id."""
        _check_tasks(tasks)
        if not tasks:
            return {}
        image_field = self._image_field(project_id)
        for t in tasks:
            clash = {KEY_FIELD, image_field} & set(t.data_extra)
            if clash:
                raise InputError(f"data_extra may not set {sorted(clash)}", record=t.key)
        existing = self._lookup(project_id, [t.key for t in tasks])
        fresh = [t for t in tasks if t.key not in existing]
        for t in tasks:
            if t.key in existing:
                self._refresh_task(*existing[t.key], t)
        if fresh:
            urls = (
                {t.key: image_url_for(t.key) for t in fresh}
                if image_url_for
                else self._upload(project_id, fresh)
            )
            self._create_tasks(project_id, fresh, urls, image_field)
        ids = self.find_tasks(project_id, [t.key for t in tasks])
        missing = [t.key for t in tasks if t.key not in ids]
        if missing:
            raise ExternalServiceError(
                f"Label Studio at {self.url} did not create tasks for {len(missing)} image(s) "
                f"in project {project_id}, e.g. {missing[0]}"
            )
        versions = [t.prediction["model_version"] for t in tasks if t.prediction]
        if versions:
            self._set_model_version(project_id, versions[-1])
        return {t.key: ids[t.key] for t in tasks}

    def ensure_view(
        self,
        project_id: int,
        title: str,
        equals: dict[str, int | str],
        order_by: str,
        *,
        descending: bool = True,
    ) -> int:
        """A Data Manager tab showing the tasks whose data fields equal `equals`, sorted by
        the data field `order_by`; the tab with this title is updated, never duplicated.
        Returns its id."""
        items = [
            {
                "filter": f"filter:tasks:data.{name}",
                "operator": "equal",
                "type": "Number" if isinstance(value, int | float) else "String",
                "value": value,
            }
            for name, value in equals.items()
        ]
        data = {
            "title": title,
            "filters": {"conjunction": "and", "items": items},
            "ordering": [f"{'-' if descending else ''}tasks:data.{order_by}"],
        }
        views = self._call(
            f"GET /api/dm/views?project={project_id}",
            lambda: self._client.views.list(project=project_id),
        )
        same = sorted(
            v.id for v in views if v.id is not None and (v.data or {}).get("title") == title
        )
        if same:
            self._call(
                f"PATCH /api/dm/views/{same[0]}",
                lambda: self._client.views.update(str(same[0]), data=data, project=project_id),
            )
            return same[0]
        created = self._call(
            "POST /api/dm/views",
            lambda: self._client.views.create(data=data, project=project_id),
        )
        if created.id is None:
            raise ExternalServiceError(f"Label Studio at {self.url} created a view with no id")
        return created.id

    def views(self, project_id: int) -> list[dict[str, Any]]:
        return self._call(
            f"GET /api/dm/views?project={project_id}",
            lambda: [
                v.model_dump(mode="json") for v in self._client.views.list(project=project_id)
            ],
        )

    def find_tasks(self, project_id: int, keys: Sequence[str]) -> dict[str, int]:
        """key -> task id for the keys that already have a task (the oldest one wins)."""
        return {k: task_id for k, (task_id, _) in self._lookup(project_id, keys).items()}

    def _lookup(self, project_id: int, keys: Sequence[str]) -> dict[str, tuple[int, dict]]:
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
            rows = self._call(
                f"GET /api/tasks?project={project_id}",
                lambda q=query: [
                    (t.id, dict(t.data or {}))
                    for t in self._client.tasks.list(
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

    # -- reads for checks ------------------------------------------------------------

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        return self._call(
            f"GET /api/tasks?project={project_id}",
            lambda: [
                t.model_dump(mode="json")
                for t in self._client.tasks.list(
                    project=project_id, fields="all", page_size=PAGE_SIZE
                )
            ],
        )

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        return self._call(
            f"GET /api/predictions?task={task_id}",
            lambda: [
                p.model_dump(mode="json") for p in self._client.predictions.list(task=task_id)
            ],
        )

    # -- internals -------------------------------------------------------------------

    def _image_field(self, project_id: int) -> str:
        config = self._call(
            f"GET /api/projects/{project_id}",
            lambda: self._client.projects.get(project_id).label_config,
        )
        images = parse_label_config(config).images if config else ()
        return images[0].data_key if images else DEFAULT_IMAGE_FIELD

    def _upload(self, project_id: int, tasks: Sequence[PushTask]) -> dict[str, str]:
        """Store the image files in the project; key -> URL for task data."""
        urls: dict[str, str] = {}
        batches: list[list[PushTask]] = [[]]
        size = 0
        for t in tasks:
            if batches[-1] and (
                len(batches[-1]) >= UPLOAD_BATCH_FILES
                or size + len(t.image_bytes) > UPLOAD_BATCH_BYTES
            ):
                batches.append([])
                size = 0
            batches[-1].append(t)
            size += len(t.image_bytes)
        path = f"api/projects/{project_id}/import"
        for batch in batches:
            # The SDK has no call for multipart import; its own HTTP client keeps the
            # authentication (and access-token refresh) in one place.
            files = {
                f"file_{i}": (
                    t.filename,
                    t.image_bytes,
                    mimetypes.guess_type(t.filename)[0] or "image/png",
                )
                for i, t in enumerate(batch)
            }
            response = self._call(
                f"POST /{path}",
                lambda f=files: self._client._client_wrapper.httpx_client.request(
                    path,
                    method="POST",
                    params={"commit_to_project": False},
                    files=f,
                    force_multipart=True,
                ),
            )
            if response.status_code >= 300:
                raise self._http_error(f"POST /{path}", response.status_code, _body(response))
            upload_ids = response.json().get("file_upload_ids") or []
            if len(upload_ids) != len(batch):
                raise ExternalServiceError(
                    f"Label Studio at {self.url} stored {len(upload_ids)} of {len(batch)} files "
                    f"in project {project_id}"
                )
            uploads = self._call(
                f"GET /api/projects/{project_id}/file-uploads",
                lambda ids=upload_ids: self._client.files.list(project_id, ids=json.dumps(ids)),
            )
            names = {u.id: u.file for u in uploads}
            for t, upload_id in zip(batch, upload_ids, strict=True):
                if upload_id not in names:
                    raise ExternalServiceError(
                        f"Label Studio at {self.url} lost uploaded file {upload_id} "
                        f"({t.filename}) in project {project_id}"
                    )
                # Label Studio serves uploads at MEDIA_URL ("/data/") + the stored name.
                urls[t.key] = f"{self._base_path}/data/{names[upload_id].lstrip('/')}"
        return urls

    def _create_tasks(
        self, project_id: int, tasks: Sequence[PushTask], urls: dict[str, str], image_field: str
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
            self._call(
                f"POST /api/projects/{project_id}/import",
                lambda b=batch: self._client.projects.import_tasks(
                    project_id, request=b, return_task_ids=True
                ),
            )

    def _refresh_task(self, task_id: int, data: dict[str, Any], t: PushTask) -> None:
        """Bring a reused task's extra fields and prediction up to date."""
        merged = {**data, **t.data_extra}
        if merged != data:
            self._call(
                f"PATCH /api/tasks/{task_id}",
                lambda: self._client.tasks.update(str(task_id), data=merged),
            )
        if not t.prediction:
            return
        fields = _prediction_fields(t.prediction)
        current = self._call(
            f"GET /api/predictions?task={task_id}",
            lambda: self._client.predictions.list(task=task_id),
        )
        same = sorted(
            p.id for p in current if p.model_version == fields["model_version"] and p.id is not None
        )
        if not same:
            self._call(
                "POST /api/predictions",
                lambda: self._client.predictions.create(task=task_id, **fields),
            )
            return
        self._call(
            f"PATCH /api/predictions/{same[0]}",
            lambda: self._client.predictions.update(
                same[0], result=fields["result"], score=fields["score"]
            ),
        )
        for extra in same[1:]:
            self._call(
                f"DELETE /api/predictions/{extra}",
                lambda e=extra: self._client.predictions.delete(e),
            )

    def _set_model_version(self, project_id: int, version: str) -> None:
        """Show this version's predictions by default; Label Studio only accepts versions
        that exist as predictions or live models, so a refusal is logged, not raised."""
        try:
            self._call(
                f"PATCH /api/projects/{project_id}",
                lambda: self._client.projects.update(project_id, model_version=version),
            )
        except ExternalServiceError as exc:
            log.warning("project %s keeps its model_version: %s", project_id, exc)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; transport and HTTP failures become ExternalServiceError that
        names the server, the request and the status (never headers or the token)."""
        try:
            return fn()
        except ApiError as exc:
            raise self._http_error(what, exc.status_code, exc.body) from None
        except ParsingError as exc:
            raise ExternalServiceError(
                f"Label Studio at {self.url}: unexpected response to {what}: "
                f"HTTP {getattr(exc, 'status_code', '?')}"
            ) from None
        except httpx.HTTPError as exc:
            raise ExternalServiceError(
                f"Label Studio at {self.url} unreachable ({what}): {type(exc).__name__}: {exc}"
            ) from None

    def _http_error(self, what: str, status: int | None, body: Any) -> ExternalServiceError:
        return ExternalServiceError(
            f"Label Studio at {self.url}: {what} failed with HTTP {status}: {_detail(body)}"
        )


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


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _detail(body: Any) -> str:
    """The useful part of an error body, kept short."""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("detail", "validation_errors", "error") if body.get(k)]
        text = "; ".join(parts) or json.dumps(body, default=str)
    else:
        text = str(body or "")
    return text[:500]
