"""Tokens with roles and project scopes, per-project webhook secrets, against `labelloop
serve` on PostgreSQL: every operation of the OpenAPI document refuses the roles below the
one it declares, a token limited to a project reaches nothing of another (ids included),
a revoked token fails at once (the dashboard's sessions too), only hashes are stored,
and `labelloop tokens` manages them."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select, text

from labelloop.access import (
    KINDS,
    ROLE_KEY,
    ROLES,
    create_token,
    digest,
    revoke_token,
    role_allows,
    set_webhook_secret,
)
from labelloop.context import Context
from labelloop.db.models import (
    ApiToken,
    DatasetVersion,
    ModelVersion,
    PipelineRun,
    TrainingRun,
)
from labelloop.labelstudio.webhooks import SECRET_HEADER
from labelloop.projects import create_project
from tests.integration.services import ApiServer
from tests.support import REPO

pytestmark = pytest.mark.integration

ENV_TOKEN = "env-" + uuid.uuid4().hex
SHARED = "shared-" + uuid.uuid4().hex
TAG = uuid.uuid4().hex[:6]


@dataclass
class Project:
    name: str
    id: int
    run_id: int
    model_version_id: int


def _seed(ctx: Context, name: str) -> Project:
    """A project with a finished pipeline run and a model version (rows only: what the
    routes address; no training needed)."""
    with ctx.db.session() as s:
        p, _ = create_project(s, name, "segmentation", ["RBC", "WBC"])
        dv = DatasetVersion(
            project_id=p.id, number=1, content_hash="c" * 64, split_seed=0, manifest_key="m"
        )
        s.add(dv)
        s.flush()
        tr = TrainingRun(
            project_id=p.id,
            dataset_version_id=dv.id,
            recipe={},
            recipe_hash=name,
            status="succeeded",
        )
        s.add(tr)
        s.flush()
        mv = ModelVersion(
            project_id=p.id,
            name=f"{name}-v1",
            training_run_id=tr.id,
            dataset_version_id=dv.id,
            artifact_key=f"models/{name}.pt",
            sha256="0" * 64,
            recipe={},
        )
        run = PipelineRun(project_id=p.id, trigger="cli", status="succeeded")
        s.add_all([mv, run])
        s.flush()
        return Project(name, p.id, run.id, mv.id)


@dataclass
class World:
    ctx: Context
    a: Project
    b: Project
    tokens: dict[str, str]  # role (or "read@a" ...) -> token
    secret_a: str


@pytest.fixture(scope="module")
def world(service_settings) -> World:
    ctx = Context(service_settings)
    a, b = _seed(ctx, f"tok-a-{TAG}"), _seed(ctx, f"tok-b-{TAG}")
    tokens = {}
    for role in ROLES:
        tokens[role] = create_token(ctx, f"{role}-{TAG}", role)["token"]
        tokens[f"{role}@a"] = create_token(ctx, f"{role}-a-{TAG}", role, a.name)["token"]
    secret_a = "own-" + uuid.uuid4().hex
    set_webhook_secret(ctx, a.name, secret_a)
    return World(ctx, a, b, tokens, secret_a)


@pytest.fixture(scope="module")
def api(service_env, world, tmp_path_factory):
    env = {
        **service_env,
        "LABELLOOP_API_TOKENS": json.dumps({"boot": ENV_TOKEN}),
        "LABELLOOP_WEBHOOK_SECRET": SHARED,
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with ApiServer.running(env, log, ENV_TOKEN) as server:
        yield server


def _as(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _call(api: ApiServer, method: str, path: str, token: str | None, **kw) -> httpx.Response:
    body = {"reason": "access test"} if method == "post" else None
    return httpx.request(
        method.upper(), api.url + path, headers=_as(token), json=body, timeout=30, **kw
    )


def _fill(path: str, p: Project) -> str:
    return (
        path.replace("{project}", p.name)
        .replace("{run_id}", str(p.run_id))
        .replace("{model_version_id}", str(p.model_version_id))
    )


def test_every_operation_refuses_the_roles_below_its_own(api, world):
    """Table-driven over the whole OpenAPI document: an operation without a declared
    access fails here, and each declared role is enforced (403 naming it below, 401
    without a token)."""
    schema = httpx.get(f"{api.url}/openapi.json", timeout=30).json()
    assert "read" in schema["components"]["securitySchemes"]["HTTPBearer"]["description"]
    checked = 0
    try:
        for path, operations in schema["paths"].items():
            for method, op in operations.items():
                where = f"{method.upper()} {path}"
                kind = op.get(ROLE_KEY)
                assert kind in KINDS, f"{where} declares no access ({ROLE_KEY})"
                assert ("Role:" in op["description"]) or ("Access:" in op["description"]), where
                url = _fill(path, world.a)
                if kind == "public":
                    assert _call(api, method, url, None).status_code not in (401, 403), where
                    continue
                if kind == "webhook":
                    assert _call(api, method, url, None).status_code == 401, where
                    continue
                assert _call(api, method, url, None).status_code == 401, where
                for held in ROLES:
                    r = _call(api, method, url, world.tokens[held])
                    if role_allows(held, kind):
                        assert r.status_code not in (401, 403), (where, held, r.text)
                    else:
                        assert r.status_code == 403, (where, held, r.text)
                        assert f"needs the {kind!r} role" in r.json()["detail"], r.text
                    checked += 1
    finally:  # the runs triggered above are not left in the queue for later tests
        for run in httpx.get(
            f"{api.url}/projects/{world.a.name}/runs",
            headers=_as(ENV_TOKEN),
            params={"status": "queued"},
            timeout=30,
        ).json():
            _call(api, "post", f"/runs/{run['id']}/cancel", ENV_TOKEN)
    assert checked >= 10 * len(ROLES), f"only {checked} role checks: the schema lost operations"


def test_a_token_limited_to_a_project_reaches_nothing_of_another(api, world):
    a, b = world.a, world.b
    reader, admin = world.tokens["read@a"], world.tokens["admin@a"]
    listed = [p["name"] for p in _call(api, "get", "/projects", reader).json()]
    assert listed == [a.name]
    assert {a.name, b.name} <= {
        p["name"] for p in _call(api, "get", "/projects", world.tokens["read"]).json()
    }
    for path in ("/projects/{p}", "/projects/{p}/runs", "/projects/{p}/model-versions"):
        assert _call(api, "get", path.format(p=a.name), reader).status_code == 200
        r = _call(api, "get", path.format(p=b.name), reader)
        assert r.status_code == 403 and a.name in r.json()["detail"], r.text
    # Addressed by id: the other project's objects do not exist for this token.
    for path in (f"/runs/{b.run_id}", f"/model-versions/{b.model_version_id}"):
        assert _call(api, "get", path, reader).status_code == 404, path
        assert _call(api, "get", path, world.tokens["read"]).status_code == 200, path
    assert (
        _call(api, "get", f"/model-versions/{b.model_version_id}/artifact", reader).status_code
        == 404
    )
    assert _call(api, "post", f"/runs/{b.run_id}/cancel", admin).status_code == 404
    assert (
        _call(api, "post", f"/model-versions/{b.model_version_id}/promote", admin).status_code
        == 404
    )
    assert _call(api, "post", f"/projects/{b.name}/runs", admin).status_code == 403
    assert _call(api, "get", f"/runs/{a.run_id}", reader).status_code == 200
    assert _call(api, "post", f"/runs/{a.run_id}/cancel", admin).status_code == 409  # ended
    with world.ctx.db.session() as s:  # nothing of b was touched
        assert s.get(ModelVersion, b.model_version_id).stage == "candidate"


def test_environment_tokens_are_admin_over_all_projects(api, world):
    names = {p["name"] for p in _call(api, "get", "/projects", ENV_TOKEN).json()}
    assert {world.a.name, world.b.name} <= names
    r = _call(api, "post", f"/model-versions/{world.b.model_version_id}/promote", ENV_TOKEN)
    assert r.status_code == 200 and r.json()["stage"] == "production", r.text


def test_revoked_tokens_fail_at_once_and_only_hashes_are_stored(api, world):
    made = create_token(world.ctx, f"temp-{TAG}", "trigger")
    token = made["token"]
    assert len(token) >= 43 and token.startswith("llt_")
    assert _call(api, "get", "/projects", token).status_code == 200
    with world.ctx.db.session() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.name == made["name"])).one()
        assert row.sha256 == digest(token) and row.last_used_at is not None
        dump = " ".join(str(r) for r in s.execute(text("SELECT * FROM api_token")).all())
        assert token not in dump and token[4:] not in dump
    revoke_token(world.ctx, made["name"])
    r = _call(api, "get", "/projects", token)
    assert r.status_code == 401, r.text
    # a request with a body is refused before it is read, also for a revoked token
    assert _call(api, "post", f"/projects/{world.a.name}/runs", token).status_code == 401


def test_dashboard_sessions_follow_the_database_token(api, world):
    made = create_token(world.ctx, f"web-{TAG}", "read", world.a.name)
    with httpx.Client(base_url=api.url, timeout=30, follow_redirects=False) as c:
        assert c.post("/login", data={"token": made["token"]}).status_code == 303
        home = c.get("/")
        assert home.status_code == 200
        assert world.a.name in home.text and world.b.name not in home.text
        assert c.get(f"/p/{world.a.name}").status_code == 200
        assert c.get(f"/p/{world.b.name}").status_code == 403
        assert c.get(f"/models/{world.b.name}-v1").status_code == 404
        revoke_token(world.ctx, made["name"])
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def _basic(password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"labelstudio:{password}".encode()).decode()
    }


def test_a_projects_webhook_secret_works_for_it_alone(api, world):
    """Project a has its own secret: it opens a's webhook and ML backend and nothing of b;
    the shared secret no longer opens a's, and still serves b (which has none)."""
    a, b = world.a.name, world.b.name
    event = {"action": "PROJECT_UPDATED", "project": {"id": 1}}

    def hook(project: str, secret: str) -> int:
        r = httpx.post(
            f"{api.url}/webhooks/labelstudio/{project}",
            json=event,
            headers={SECRET_HEADER: secret},
            timeout=30,
        )
        return r.status_code

    def backend(project: str, secret: str) -> int:
        r = httpx.post(f"{api.url}/ml/{project}/setup", json={}, headers=_basic(secret), timeout=30)
        return r.status_code

    assert hook(a, world.secret_a) == 202  # acknowledged (an action labelloop ignores)
    assert hook(b, world.secret_a) == 401
    assert hook(a, SHARED) == 401
    assert hook(b, SHARED) == 202
    assert backend(a, world.secret_a) in (200, 404)  # in: a model version, or none in production
    assert backend(b, world.secret_a) == 401
    assert backend(a, SHARED) == 401


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labelloop.cli", "tokens", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tokens_cli_creates_lists_and_revokes(api, world, service_env):
    import os

    env = {**os.environ, **service_env}
    name = f"cli-{TAG}"
    made = _cli(env, "create", name, "--role", "read", "--project", world.a.name, "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    r = _call(api, "get", "/projects", token)
    assert r.status_code == 200 and [p["name"] for p in r.json()] == [world.a.name]
    listed = _cli(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(t for t in json.loads(listed.stdout) if t["name"] == name)
    assert row["role"] == "read" and row["project"] == world.a.name and "token" not in row
    assert token not in listed.stdout
    again = _cli(env, "create", name, "--role", "admin")
    assert again.returncode == 2 and "already named" in again.stderr
    assert _cli(env, "revoke", name).returncode == 0
    assert _call(api, "get", "/projects", token).status_code == 401
    unknown = _cli(env, "revoke", name)
    assert unknown.returncode == 2 and f"no active token named {name!r}" in unknown.stderr
