"""The REST API under attack, as deployed (`labelloop serve` on PostgreSQL): a body is
never read before the caller shows credentials, and never beyond the size limit."""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.services import ApiServer

pytestmark = pytest.mark.integration

TOKEN = "t-" + uuid.uuid4().hex
LIMIT = 256 * 1024
HUGE = 500_000_000


@pytest.fixture(scope="module")
def api(service_env, tmp_path_factory):
    env = {
        **service_env,
        "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN}),
        "LABELLOOP_API_MAX_BODY_BYTES": str(LIMIT),
        "LABELLOOP_WEBHOOK_SECRET": "hook-" + uuid.uuid4().hex,
    }
    with ApiServer.running(env, tmp_path_factory.mktemp("serve") / "serve.log", TOKEN) as server:
        yield server


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def _answer_to_announced_body(
    api: ApiServer, path: str, headers: dict[str, str], length: int = LIMIT
) -> int:
    """Announce a body of `length` bytes, send 64 KiB of it, and wait (5 s at most) for the
    answer: a server that waits for the rest of the body before answering fails here."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        head = {"Content-Type": "application/json", "Content-Length": str(length), **headers}
        sock.sendall(_head(path, head) + b"[" + b"0," * 32 * 1024)
        return _status(sock)


def _rss_kib(pid: int) -> int:
    """The resident set of the server process and its children (uvicorn may fork)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Pid", 0)) == pid or int(fields.get("PPid", 0)) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


@pytest.mark.parametrize(
    "path", ["/projects/p/runs", "/model-versions/1/promote", "/runs/1/cancel"]
)
def test_an_anonymous_body_is_refused_before_it_is_read(api, path):
    assert _answer_to_announced_body(api, path, {}) == 401
    wrong = {"Authorization": "Bearer nope"}
    assert _answer_to_announced_body(api, path, wrong) == 401
    # Past the limit it is refused either way, still unread.
    assert _answer_to_announced_body(api, path, {}, HUGE) in (401, 413)


def test_a_webhook_body_needs_the_secret_before_it_is_read(api):
    assert _answer_to_announced_body(api, "/webhooks/labelstudio/p", {}) == 401


def test_an_oversized_body_gets_413_from_its_length(api):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _answer_to_announced_body(api, "/projects/p/runs", auth, HUGE) == 413


def test_a_chunked_body_is_cut_off_at_the_limit(api):
    """No Content-Length to go by: the server must stop reading once the limit is passed
    and answer 413, not read 500 MB."""
    head = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
    }
    piece = b"0," * 32 * 1024
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(_head("/projects/p/runs", head) + b"1\r\n[\r\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sent < HUGE:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        assert _status(sock) == 413
    assert sent < 64 * LIMIT, f"the server read {sent} bytes before refusing"


def test_legitimate_requests_pass_and_memory_stays_bounded(api):
    before = _rss_kib(api.proc.pid)
    for _ in range(5):
        _answer_to_announced_body(api, "/projects/p/runs", {}, HUGE)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        _answer_to_announced_body(api, "/projects/p/runs", auth, HUGE)
    with httpx.Client(base_url=api.url, headers=api.headers, timeout=30) as client:
        r = client.post("/projects/no-such-project/runs", json={"budget": 2})
        assert r.status_code == 404, r.text
        assert client.get("/projects").status_code == 200
    assert _rss_kib(api.proc.pid) - before < 64 * 1024, "the server grew by more than 64 MiB"
