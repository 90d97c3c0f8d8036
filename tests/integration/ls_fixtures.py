"""The `labelstudio` fixture: one real Label Studio server for the whole test session.

Loaded with `pytest_plugins`; the server only starts when a test asks for the fixture.
Without a Label Studio installation the test is skipped with the reason on a user's
machine and fails under CI=true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.labelstudio_server import (
    BIN_ENV,
    REPO,
    LabelStudioServer,
    find_label_studio_binary,
)
from tests.support import require


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running server: .url, .token, .document_root (served as /data/local-files/?d=...),
    .log_path, .username, .password."""
    binary = find_label_studio_binary()
    require(
        binary is not None,
        f"Label Studio not found: set {BIN_ENV}"
        + (
            f" (it points at a missing file: {os.environ[BIN_ENV]})"
            if os.environ.get(BIN_ENV)
            else ""
        )
        + f", install it into {REPO / '.venv-ls'} or put `label-studio` on PATH",
    )
    assert binary is not None
    root = tmp_path_factory.mktemp("labelstudio")
    server = LabelStudioServer(binary, root / "server", root / "documents")
    server.start()
    try:
        yield server
    finally:
        server.stop()
