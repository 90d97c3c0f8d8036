"""What tests need from their surroundings: services and real data are required under
CI=true (a missing one fails the test, so CI can never pass by skipping) and skipped with
a visible reason on a user's machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def require_shared_data(*parts: str) -> Path:
    """A path under ../shared/data (real third-party data kept outside the repository)."""
    path = SHARED_DATA.joinpath(*parts)
    require(path.exists(), f"shared test data not found: {path}")
    return path
