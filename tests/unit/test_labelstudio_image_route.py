"""Where a live sync may read a task's image from: the Label Studio server (with the
token), allowed hosts and buckets (without it), nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelloop.errors import InputError
from labelloop.labelstudio.remote import ImageRoute, image_route

SERVER = "http://ls.local:8080"


@pytest.mark.parametrize(
    ("ref", "url"),
    [
        ("/data/upload/3/ab12-cell.png", "/data/upload/3/ab12-cell.png"),
        ("/data/local-files/?d=smears/a%20b.png", "/data/local-files/?d=smears/a%20b.png"),
        ("http://ls.local:8080/data/upload/3/x.png", "/data/upload/3/x.png"),
        ("HTTP://LS.local:8080/data/upload/3/x.png", "/data/upload/3/x.png"),
    ],
)
def test_server_references_go_to_the_server(ref, url):
    assert image_route(ref, SERVER, []) == ImageRoute("server", url)


def test_server_under_a_path_prefix():
    route = image_route("/ls/data/upload/1/x.png", "https://lab.example.org/ls/", [])
    assert route == ImageRoute("server", "/ls/data/upload/1/x.png")
    route = image_route(
        "https://lab.example.org/ls/data/local-files/?d=a.png", "https://lab.example.org/ls", []
    )
    assert route == ImageRoute("server", "/ls/data/local-files/?d=a.png")


@pytest.mark.parametrize(
    "ref",
    [
        "/api/projects/1/export",
        "/data/upload/../../etc/passwd",
        "relative/cell.png",
        "http://ls.local:8080/api/current-user/whoami",
    ],
)
def test_other_server_paths_are_refused(ref):
    with pytest.raises(InputError, match=r"neither /data/upload"):
        image_route(ref, SERVER, [])


def test_foreign_hosts_need_the_allow_list():
    ref = "https://images.example.org/smear/1.png"
    with pytest.raises(InputError, match=r"'images\.example\.org' is not allowed") as err:
        image_route(ref, SERVER, [])
    assert "LABELLOOP_LABELSTUDIO_IMAGE_HOSTS" in err.value.reason
    assert image_route(ref, SERVER, ["images.example.org"]) == ImageRoute("http", ref)
    assert image_route(ref, SERVER, [" Images.Example.org "]).via == "http"
    # A port on the same host name is another server: host or host:port both count.
    assert image_route("http://images.example.org:81/a.png", SERVER, ["images.example.org"]).via
    with pytest.raises(InputError):
        image_route("http://ls.local:9999/data/upload/1/x.png", SERVER, [])
    with pytest.raises(InputError):
        image_route("http://evil.example.org/a.png", SERVER, ["images.example.org"])


def test_buckets_need_the_allow_list_and_other_schemes_are_refused():
    with pytest.raises(InputError, match=r"bucket s3://slides is not allowed"):
        image_route("s3://slides/a.png", SERVER, ["slides"])
    assert image_route("s3://slides/a.png", SERVER, ["s3://slides"]) == ImageRoute(
        "fsspec", "s3://slides/a.png"
    )
    for ref in ("file:///etc/passwd", "gs://b/a.png", "data:image/png;base64,AAAA", "ftp://h/a"):
        with pytest.raises(InputError, match=r"unsupported scheme"):
            image_route(ref, SERVER, ["s3://slides", "h"])


@given(st.text(max_size=200), st.lists(st.text(max_size=30), max_size=3))
def test_any_reference_is_routed_or_refused_with_an_input_error(ref, hosts):
    try:
        route = image_route(ref, SERVER, hosts)
    except InputError:
        return
    assert route.via in ("server", "http", "fsspec")
    if route.via == "server":
        assert route.url.startswith(("/data/upload/", "/data/local-files"))


class _Redirecting:
    """A real HTTP server on loopback: `/data/upload/...` redirects to another server that
    would hand out the bytes (a host a direct reference may not reach)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Target(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"secret bytes")

            def log_message(self, *args) -> None:
                pass

        self.target = ThreadingHTTPServer(("127.0.0.1", 0), Target)
        location = f"http://127.0.0.1:{self.target.server_port}/internal"

        class Server(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        for srv in (self.server, self.target):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        for srv in (self.server, self.target):
            srv.shutdown()
            srv.server_close()


def test_a_redirect_from_the_server_is_refused_not_followed():
    from labelloop.labelstudio.remote import LabelStudioSource

    servers = _Redirecting()
    source = LabelStudioSource(servers.url, "token", timeout=5)
    try:
        with pytest.raises(InputError, match=r"redirects to 'http://127\.0\.0\.1:\d+/internal'"):
            source.image_bytes("/data/upload/1/a.png", file="export", record="task 1")
    finally:
        source.close()
        servers.close()
