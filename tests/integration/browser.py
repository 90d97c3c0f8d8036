"""A real headless browser for tests of what people look at (Label Studio, the dashboard).

Playwright for Python drives Debian's `chromium` (Playwright's own browser download is not
used): `make test` installs the package when it is missing. Screenshots go to
`test-artifacts/` (git-ignored) so a failing run can be looked at afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, require

ARTIFACTS = REPO / "test-artifacts"
# Chromium without the network chatter a closed machine refuses (and waits on).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("LABELLOOP_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for the session; each test opens its own context/page."""
    exe = chromium_path()
    require(exe is not None, "chromium is not installed (Debian package `chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (Python) is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request) -> Iterator[object]:
    """A fresh page with console errors collected in `page.console_errors`; a screenshot
    named after the test is kept in test-artifacts/ whatever the outcome."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.console_errors = errors  # type: ignore[attr-defined]
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    # The page may already be gone; the test's own result is what matters.
    with contextlib.suppress(Exception):
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def screenshot(page, name: str) -> Path:
    """Keep a named screenshot (for docs or for looking at a run)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
