"""Reading a live Label Studio project over its API (label-studio-sdk 2.x).

Connection, token handling and the mapping of HTTP failures to ExternalServiceError are
those of `labelloop.labelstudio.client.LabelStudioClient`, so pushing and pulling report
the same way and neither ever puts the token into a message.

Image references decide where bytes may come from. `/data/upload/...` and
`/data/local-files/?d=...` live on the Label Studio server and are fetched from it with
the token. Any other http(s) host, and s3:// buckets, are reached only when listed in
`labelstudio_image_hosts`, and never with the token: a task's data is written by
whoever imports tasks, and must not be able to send our credentials, or our requests,
anywhere it likes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlparse

import httpx

from labelloop.errors import ConfigError, ExternalServiceError, InputError
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.label_config import LabelConfig, parse_label_config

PAGE_SIZE = 100
ID_PAGE_SIZE = 1000
MAX_IMAGE_BYTES = 512 * 1024 * 1024
# Datetime filter values Label Studio's data manager parses (naive UTC).
FILTER_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
# Only what a sync reads: predictions and drafts stay on the server. `include` also
# filters the fields of nested annotations, so theirs are listed too.
TASK_FIELDS = (
    "id,data,annotations,updated_at,project,"
    "result,was_cancelled,ground_truth,completed_by,created_at"
)
SERVER_PATHS = ("/data/upload/", "/data/local-files")


@dataclass(frozen=True)
class RemoteProject:
    id: int
    title: str
    config: LabelConfig
    image_key: str  # task data field that holds the image reference


@dataclass(frozen=True)
class ImageRoute:
    """Where an image reference is read from: "server" (with the token), "http" (an
    allowed host, no token) or "fsspec" (an allowed bucket)."""

    via: str
    url: str


def image_route(ref: str, server_url: str, allowed: Sequence[str]) -> ImageRoute:
    """Decide how to read one task's image reference; refuse what the policy does not allow.

    `allowed` holds host names ("images.example.org", optionally with ":port") and
    buckets ("s3://bucket"). The Label Studio server itself is always allowed."""
    server = urlparse(server_url)
    base_path = server.path.rstrip("/")
    parsed = urlparse(ref)
    scheme = parsed.scheme.lower()
    same_origin = scheme == server.scheme.lower() and parsed.netloc.lower() == (
        server.netloc.lower()
    )
    if (not scheme and not parsed.netloc) or same_origin:
        path = parsed.path
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        if path.startswith(SERVER_PATHS) and ".." not in path.split("/"):
            query = f"?{parsed.query}" if parsed.query else ""
            return ImageRoute("server", f"{base_path}{path}{query}")
        raise InputError(
            "image reference is neither /data/upload/... nor /data/local-files/?d=... on the "
            f"Label Studio server: {ref!r}"
        )
    hosts = {h.strip().lower().rstrip("/") for h in allowed if h.strip()}
    if scheme in ("http", "https"):
        if parsed.netloc.lower() in hosts or (parsed.hostname or "").lower() in hosts:
            return ImageRoute("http", ref)
        raise InputError(
            f"image host {parsed.netloc!r} is not allowed ({ref!r}); add it to "
            "LABELLOOP_LABELSTUDIO_IMAGE_HOSTS to read images from it"
        )
    if scheme == "s3":
        if f"s3://{parsed.netloc.lower()}" in hosts:
            return ImageRoute("fsspec", ref)
        raise InputError(
            f"bucket s3://{parsed.netloc} is not allowed ({ref!r}); add 's3://{parsed.netloc}' "
            "to LABELLOOP_LABELSTUDIO_IMAGE_HOSTS to read images from it"
        )
    raise InputError(f"image reference {ref!r} cannot be read (unsupported scheme)")


class LabelStudioSource:
    """Tasks, labeling config, users and image bytes of a Label Studio server."""

    def __init__(
        self, url: str, token: str, *, image_hosts: Sequence[str] = (), timeout: float = 30
    ):
        if not url:
            raise ConfigError("no Label Studio URL: pass --url or set LABELLOOP_LABELSTUDIO_URL")
        if not token:
            raise ConfigError(
                "no Label Studio token: set LABELLOOP_LABELSTUDIO_TOKEN (an API or personal "
                "access token of a user who can read the project)"
            )
        self._api = LabelStudioClient(url, token, timeout=timeout)
        self._client = self._api.sdk
        self._call = self._api.call
        self.url = self._api.url
        self.image_hosts = list(image_hosts)
        self._timeout = timeout
        self._plain: httpx.Client | None = None  # for allowed foreign hosts: no token

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()

    def project(self, project_id: int) -> RemoteProject:
        p = self._call(
            f"GET /api/projects/{project_id}", lambda: self._client.projects.get(project_id)
        )
        config = parse_label_config(p.label_config or "<View/>")
        if not config.controls:
            raise InputError(
                f"Label Studio project {project_id} at {self.url} has no labeling controls"
            )
        image_key = config.images[0].data_key if config.images else "image"
        return RemoteProject(int(project_id), p.title or "", config, image_key)

    def users(self) -> dict[int, str]:
        """user id -> email, so annotators read as in exports; empty when not permitted."""
        try:
            rows = self._call("GET /api/users", lambda: list(self._client.users.list()))
        except ExternalServiceError:
            return {}
        return {u.id: u.email or str(u.id) for u in rows if u.id is not None}

    def tasks_updated_since(
        self,
        project_id: int,
        since: datetime | None,
        on_total: Callable[[int], None] | None = None,
    ) -> Iterator[dict]:
        """Tasks with updated_at > since (all tasks when None), in id order.

        Pages are keyed by the last id seen, not by page number, so tasks that change or
        disappear while the pull runs cannot shift a page boundary and be skipped."""
        base = []
        if since is not None:
            base.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": since.astimezone(UTC).strftime(FILTER_TIME),
                }
            )
        last_id = 0
        first = True
        while True:
            items = [
                *base,
                {
                    "filter": "filter:tasks:id",
                    "operator": "greater",
                    "type": "Number",
                    "value": last_id,
                },
            ]
            query = json.dumps(
                {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}
            )
            page = self._call(
                f"GET /api/tasks?project={project_id}",
                lambda q=query: self._client.tasks.list(
                    project=project_id,
                    query=q,
                    fields="all",
                    include=TASK_FIELDS,
                    resolve_uri=False,
                    page=1,
                    page_size=PAGE_SIZE,
                ),
            )
            if first and on_total is not None:
                on_total(int(page.response.total))
            first = False
            rows = [t.model_dump(mode="json") for t in page.items or []]
            for row in rows:
                if any("result" not in a for a in row.get("annotations") or []):
                    raise ExternalServiceError(
                        f"Label Studio at {self.url} returned annotations of task {row.get('id')} "
                        "without their results; this server version is not supported"
                    )
            yield from rows
            if len(rows) < PAGE_SIZE:
                return
            last_id = max(int(t["id"]) for t in rows)

    def task_count(self, project_id: int) -> int:
        page = self._call(
            f"GET /api/tasks?project={project_id}",
            lambda: self._client.tasks.list(
                project=project_id, fields="task_only", include="id", page=1, page_size=1
            ),
        )
        return int(page.response.total)

    def task_ids(self, project_id: int) -> set[int]:
        """Every task id of the project: what is not here was deleted upstream."""
        ids: set[int] = set()
        last_id = 0
        while True:
            query = json.dumps(
                {
                    "filters": {
                        "conjunction": "and",
                        "items": [
                            {
                                "filter": "filter:tasks:id",
                                "operator": "greater",
                                "type": "Number",
                                "value": last_id,
                            }
                        ],
                    },
                    "ordering": ["tasks:id"],
                }
            )
            page = self._call(
                f"GET /api/tasks?project={project_id}",
                lambda q=query: self._client.tasks.list(
                    project=project_id,
                    query=q,
                    fields="task_only",
                    include="id",
                    page=1,
                    page_size=ID_PAGE_SIZE,
                ),
            )
            batch = [int(t.id) for t in page.items or [] if t.id is not None]
            ids.update(batch)
            if len(batch) < ID_PAGE_SIZE:
                return ids
            last_id = max(batch)

    def image_bytes(self, ref: str, *, file: str, record: str) -> bytes:
        """The bytes behind one task's image reference, read by the route the policy allows."""
        try:
            route = image_route(ref, self.url, self.image_hosts)
        except InputError as exc:
            raise InputError(exc.reason, file=file, record=record) from None
        if route.via == "fsspec":
            return _read_fsspec(route.url, file=file, record=record)
        if route.via == "server":
            origin = urlparse(self.url)
            stream = self._client._client_wrapper.httpx_client.stream(
                route.url.lstrip("/"), method="GET", base_url=f"{origin.scheme}://{origin.netloc}"
            )  # the SDK's client follows no redirects (LabelStudioClient)
        else:
            if self._plain is None:
                self._plain = httpx.Client(timeout=self._timeout, follow_redirects=False)
            stream = self._plain.stream("GET", route.url)
        shown = ref if route.via == "http" else f"{self.url}{route.url}"
        try:
            with stream as response:
                if response.status_code == 401 and route.via == "server":
                    raise ExternalServiceError(
                        f"Label Studio at {self.url} refused the image {ref!r} "
                        "(HTTP 401): check the token"
                    )
                if response.is_redirect:
                    raise InputError(
                        f"image {shown} redirects to {response.headers.get('location')!r}; "
                        "redirects are not followed (reference the image where it is, on "
                        "the Label Studio server or an allowed image host)",
                        file=file,
                        record=record,
                    )
                if response.status_code != 200:
                    raise InputError(
                        f"image {shown} could not be read (HTTP {response.status_code})",
                        file=file,
                        record=record,
                    )
                return _capped(response.iter_bytes(), shown, file, record)
        except httpx.HTTPError as exc:
            raise ExternalServiceError(
                f"image {shown} unreachable: {type(exc).__name__}: {exc}"
            ) from None


def _capped(chunks: Iterator[bytes], shown: str, file: str, record: str) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) > MAX_IMAGE_BYTES:
            raise InputError(
                f"image {shown} is larger than {MAX_IMAGE_BYTES >> 20} MiB",
                file=file,
                record=record,
            )
    return bytes(out)


def _read_fsspec(url: str, *, file: str, record: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except ImportError as exc:
        raise ConfigError(f"reading {url} needs an fsspec backend: {exc}") from None
    except FileNotFoundError:
        raise InputError(f"image {url} does not exist", file=file, record=record) from None
    except OSError as exc:
        raise ExternalServiceError(f"image {url} could not be read: {exc}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(
            f"image {url} is larger than {MAX_IMAGE_BYTES >> 20} MiB", file=file, record=record
        )
    return data
