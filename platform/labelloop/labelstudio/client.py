"""The Label Studio API client that push, live sync and webhook registration share
(label-studio-sdk 2.x).

One connection per server and token, and one translation of transport and HTTP failures
into ExternalServiceError that names the server, the request and the status, never
headers or the token: every request goes through `LabelStudioClient.call`. What a push
does on the server (tasks with predictions, tabs, the model version) lives in
`labelloop.labelstudio.push`, reading a project for sync in `labelloop.labelstudio.remote`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.parse_error import ParsingError

from labelloop.errors import ExternalServiceError

PAGE_SIZE = 100

T = TypeVar("T")


class LabelStudioClient:
    """A Label Studio server reached with an API token (legacy token or personal access
    token; the SDK exchanges the latter for access tokens itself). `sdk` is the SDK's
    client, for requests this class has no method for: run them through `call`."""

    def __init__(self, url: str, token: str, *, timeout: float = 30):
        self.url = url.rstrip("/")
        self.base_path = urlparse(self.url).path  # non-empty when served under a prefix
        # Redirects are not followed: one could lead the token, or an image fetch, to a
        # host that a direct reference may not reach (refused like one instead).
        self.sdk = self.call(
            "connect",
            lambda: LabelStudio(
                base_url=self.url, api_key=token, timeout=timeout, follow_redirects=False
            ),
        )

    # -- projects --------------------------------------------------------------------

    def ensure_project(self, title: str, label_config: str) -> int:
        """The id of the oldest project with exactly this title, created when missing.

        An existing project keeps its own labeling config: changing it under existing
        annotations can fail or hide them, so that stays a deliberate manual step.
        """
        found = self.call(
            "GET /api/projects",
            lambda: [
                p.id
                for p in self.sdk.projects.list(title=title, page_size=PAGE_SIZE)
                if p.title == title and p.id is not None
            ],
        )
        if found:
            return min(found)
        created = self.call(
            "POST /api/projects",
            lambda: self.sdk.projects.create(title=title, label_config=label_config),
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
        self.call(f"GET /api/projects/{project_id}", lambda: self.sdk.projects.get(project_id))
        hooks = self.call(
            "GET /api/webhooks", lambda: self.sdk.webhooks.list(project=str(project_id))
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
            self.call(
                f"PATCH /api/webhooks/{hook_id}",
                lambda: self.sdk.webhooks.update(hook_id, **fields),
            )
            return hook_id, False
        hook = self.call(
            "POST /api/webhooks",
            lambda: self.sdk.webhooks.create(project=project_id, **fields),
        )
        if hook.id is None:
            raise ExternalServiceError(
                f"Label Studio at {self.url} created a webhook without an id"
            )
        return hook.id, True

    # -- ML backends -----------------------------------------------------------------

    def whoami(self) -> str:
        """The token's user (its e-mail): a cheap request that proves URL and token."""
        user = self.call("GET /api/current-user/whoami", lambda: self.sdk.users.whoami())
        return str(user.email or user.username or user.id)

    def ensure_ml_backend(
        self, project_id: int, url: str, *, title: str, user: str, password: str
    ) -> tuple[int, bool]:
        """The project's ML backend at `url` (basic auth), created or updated, with the
        project set to ask it for a prediction whenever a task without one is opened.
        Label Studio checks `/health` and `/setup` while saving, so the backend must be up.
        Returns (backend id, created)."""
        fields = {
            "url": url,
            "title": title,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": user,
            "basic_auth_pass": password,
            "is_interactive": False,
        }
        found = self.call(
            f"GET /api/ml?project={project_id}", lambda: self.sdk.ml.list(project=project_id)
        )
        same = next((b for b in found if b.url == url and b.id is not None), None)
        if same is not None:
            # The project goes along: Label Studio 1.23 re-runs /setup on update and fails
            # (HTTP 500) when the PATCH does not name it.
            self.call(
                f"PATCH /api/ml/{same.id}",
                lambda: self.sdk.ml.update(same.id, project=project_id, **fields),
            )
            backend_id, created = same.id, False
        else:
            made = self.call(
                "POST /api/ml", lambda: self.sdk.ml.create(project=project_id, **fields)
            )
            if made.id is None:
                raise ExternalServiceError(f"Label Studio at {self.url} created no ML backend id")
            backend_id, created = made.id, True
        self.call(
            f"PATCH /api/projects/{project_id}",
            lambda: self.sdk.projects.update(
                project_id, evaluate_predictions_automatically=True, show_collab_predictions=True
            ),
        )
        return backend_id, created

    # -- files -----------------------------------------------------------------------

    def post_files(
        self, path: str, files: dict[str, tuple[str, bytes, str]], params: dict[str, Any]
    ) -> Any:
        """POST files as multipart to `path` (e.g. "api/projects/3/import"); the JSON reply.

        The SDK has no call for multipart import; its own HTTP client keeps the
        authentication (and access-token refresh) in one place."""
        response = self.call(
            f"POST /{path}",
            lambda: self.sdk._client_wrapper.httpx_client.request(
                path, method="POST", params=params, files=files, force_multipart=True
            ),
        )
        if response.status_code >= 300:
            raise self.http_error(f"POST /{path}", response.status_code, _body(response))
        return response.json()

    # -- reads -----------------------------------------------------------------------

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        return self.call(
            f"GET /api/tasks?project={project_id}",
            lambda: [
                t.model_dump(mode="json")
                for t in self.sdk.tasks.list(project=project_id, fields="all", page_size=PAGE_SIZE)
            ],
        )

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        return self.call(
            f"GET /api/predictions?task={task_id}",
            lambda: [p.model_dump(mode="json") for p in self.sdk.predictions.list(task=task_id)],
        )

    def views(self, project_id: int) -> list[dict[str, Any]]:
        return self.call(
            f"GET /api/dm/views?project={project_id}",
            lambda: [v.model_dump(mode="json") for v in self.sdk.views.list(project=project_id)],
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; transport and HTTP failures become ExternalServiceError that
        names the server, the request and the status (never headers or the token)."""
        try:
            return fn()
        except ApiError as exc:
            raise self.http_error(what, exc.status_code, exc.body) from None
        except ParsingError as exc:
            raise ExternalServiceError(
                f"Label Studio at {self.url}: unexpected response to {what}: "
                f"HTTP {getattr(exc, 'status_code', '?')}"
            ) from None
        except httpx.HTTPError as exc:
            raise ExternalServiceError(
                f"Label Studio at {self.url} unreachable ({what}): {type(exc).__name__}: {exc}"
            ) from None

    def http_error(self, what: str, status: int | None, body: Any) -> ExternalServiceError:
        return ExternalServiceError(
            f"Label Studio at {self.url}: {what} failed with HTTP {status}: {_detail(body)}"
        )


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
