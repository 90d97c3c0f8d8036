from __future__ import annotations

import pytest

from tests import support


def test_required_data_fails_under_ci_and_skips_otherwise(monkeypatch, tmp_path):
    monkeypatch.setattr(support, "SHARED_DATA", tmp_path / "absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        support.require_shared_data("exports")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="not found"):
        support.require_shared_data("exports")
    (tmp_path / "absent" / "exports").mkdir(parents=True)
    assert support.require_shared_data("exports") == tmp_path / "absent" / "exports"
