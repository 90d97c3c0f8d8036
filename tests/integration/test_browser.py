"""The browser fixture itself: a real Chromium renders a page served on loopback."""

from __future__ import annotations

import http.server
import threading

import pytest

pytestmark = pytest.mark.integration


def test_chromium_renders_a_local_page(page, tmp_path):
    (tmp_path / "index.html").write_text(
        "<html><head><title>labelloop</title><link rel='icon' href='data:,'></head>"
        "<body><p id='n'>42</p></body></html>"
    )

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{srv.server_port}/index.html")
        assert page.title() == "labelloop"
        assert page.locator("#n").inner_text() == "42"
        assert page.console_errors == []
    finally:
        srv.shutdown()
