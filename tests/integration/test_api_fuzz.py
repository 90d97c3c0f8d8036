"""The whole REST API fuzzed from its own OpenAPI schema (schemathesis) against `labelloop
serve` on PostgreSQL: whatever a client sends, the answer is never a server error. Bad
ids and strings the database cannot hold (out-of-range integers, NUL bytes) are the
client's mistake: 404 / 422."""

from __future__ import annotations

import json
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from labelloop.context import Context
from labelloop.labelstudio.webhooks import SECRET_HEADER
from labelloop.projects import create_project
from tests.integration.services import ApiServer

pytestmark = pytest.mark.integration

TOKEN = "t-" + uuid.uuid4().hex
SECRET = "hook-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def api(service_env, service_settings, tmp_path_factory):
    with Context(service_settings).db.session() as s:  # a project to find, besides 404s
        create_project(s, "fuzz", "segmentation", ["RBC", "WBC"])
    env = {
        **service_env,
        "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN}),
        "LABELLOOP_WEBHOOK_SECRET": SECRET,
    }
    with ApiServer.running(env, tmp_path_factory.mktemp("serve") / "serve.log", TOKEN) as server:
        yield server


EXAMPLES = 12  # per operation and mode: the whole fuzz stays within about two minutes


@pytest.mark.parametrize(
    "path",
    [
        "/model-versions/2147483648",
        "/model-versions/99999999999999999999",
        "/model-versions/-1/artifact",
        "/runs/9223372036854775808",
        "/projects/a%00b",
        "/projects/a%00b/runs",
        "/projects/fuzz/runs?status=x%00y",
    ],
)
def test_bad_ids_are_the_clients_mistake(api, path):
    with api.client() as client:
        r = client.get(path)
    assert r.status_code in (404, 422), f"GET {path}: {r.status_code} {r.text}\n{api.tail()}"


def test_nul_bytes_in_a_body_are_the_clients_mistake(api):
    with api.client() as client:
        r = client.post("/runs/1/cancel", json={"reason": "a\x00b"})
        assert r.status_code in (404, 422), r.text
        r = client.post("/projects/fuzz/runs", json={"push_to": "file\x00"})
        assert r.status_code == 422, r.text


def test_no_request_gets_a_server_error(api):
    """Every operation, with valid (positive) and invalid (negative) data; the server
    log is shown with the first failure."""
    loaded = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}", SECRET_HEADER: SECRET}
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert len(operations) >= 10, "the schema lost its operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case) -> None:
                response = case.call(base_url=api.url, headers=headers, timeout=30)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:500]}\n{case.as_curl_command()}\n{api.tail()}"
                )

            try:
                call()
            except Unsatisfiable:  # nothing to make invalid (e.g. no parameters at all)
                assert mode is GenerationMode.NEGATIVE, operation.label
