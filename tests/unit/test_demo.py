"""`labelloop demo` end to end on a few synthetic smears: one round through the embedded
worker, and the warning when its wall-clock cap stops training early."""

from __future__ import annotations

from typer.testing import CliRunner

from labelloop.cli.main import app


def test_the_demo_says_when_its_training_cap_stopped_training(tmp_path):
    args = ["demo", "--data-dir", str(tmp_path / "demo"), "--labeled", "6", "--pool", "2"]
    res = CliRunner().invoke(app, [*args, "--budget", "1", "--train-seconds", "1"])
    assert res.exit_code == 0, res.output
    # One second cannot hold the recipe's 45 epochs: the demo says what that costs.
    assert "training stopped at the 1 s cap after" in res.output
    assert "of 45 epochs" in res.output and "weaker than an idle machine's" in res.output
    assert (tmp_path / "demo" / "exports" / "round-001" / "tasks.json").is_file()
