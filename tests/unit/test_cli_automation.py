"""`labelloop runs`, `project schedule`, `webhooks register`, `serve`, `db upgrade --wait`:
exit code 2 with a message naming what is wrong; a run end to end, embedded."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from labelloop.cli.main import app
from tests.factories import small_export

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    for var in (
        "LABELLOOP_DATABASE_URL",
        "LABELLOOP_BLOB_URL",
        "LABELLOOP_BROKER_URL",
        "LABELLOOP_API_TOKENS",
        "LABELLOOP_WEBHOOK_SECRET",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "data"


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def project(tmp_path):
    r = run("project", "create", "cells", "--task", "segmentation", "--labels", "RBC,WBC,Platelets")
    assert r.exit_code == 0, r.output
    return "cells"


def test_project_schedule_shows_changes_and_refuses_bad_values(project, tmp_path):
    r = run("project", "schedule", "cells", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["cron"] == "0 2 * * *"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\n")
    r = run(
        "project", "schedule", "cells", "--cron", "*/30 * * * *", "--min-annotations", "7",
        "--paused", "--recipe", str(recipe), "--json",
    )  # fmt: skip
    shown = json.loads(r.output)
    assert (shown["cron"], shown["min_annotations"], shown["active"]) == ("*/30 * * * *", 7, False)
    assert shown["recipe"] == {"epochs": 3}
    r = run("project", "schedule", "cells", "--cron", "0 25 * * *")
    assert r.exit_code == 2 and "25 > 23" in r.output
    r = run("project", "schedule", "cells", "--push-to", "fax")
    assert r.exit_code == 2 and "push_to must be one of" in r.output
    r = run("project", "schedule", "cells", "--cron", "default", "--json")
    assert json.loads(r.output)["cron"] == "0 2 * * *"
    assert run("project", "schedule", "nope").exit_code == 2


def test_runs_commands_name_what_is_wrong(project):
    r = run("runs", "show", "999")
    assert r.exit_code == 2 and "no pipeline run with id 999" in r.output
    r = run("runs", "cancel", "999")
    assert r.exit_code == 2
    r = run("runs", "start", "-p", "cells", "--no-wait")
    assert r.exit_code == 2 and "needs a real broker" in r.output
    r = run("runs", "start", "-p", "nope")
    assert r.exit_code == 2 and "no project named 'nope'" in r.output
    r = run("runs", "start", "-p", "cells", "--epochs", "0")
    assert r.exit_code == 2 and "epochs" in r.output
    assert run("runs", "list", "-p", "cells", "--json").output.strip() == "[]"


def test_serve_and_webhooks_refuse_to_start_unconfigured(project, monkeypatch):
    r = run("serve")
    assert r.exit_code == 2 and "LABELLOOP_API_TOKENS" in r.output
    # A token in the database is enough: the next check (the broker) is reached.
    assert run("tokens", "create", "ops", "--role", "admin").exit_code == 0
    r = run("serve", "--workers", "2")
    assert r.exit_code == 2 and "needs a real broker" in r.output, r.output
    assert run("tokens", "revoke", "ops").exit_code == 0
    r = run("serve")
    assert r.exit_code == 2 and "no API tokens" in r.output
    r = run("tokens", "revoke", "ops")
    assert r.exit_code == 2 and "no active token named 'ops'" in r.output
    monkeypatch.setenv("LABELLOOP_API_TOKENS", '{"a": "b"}')
    r = run("tokens", "create", "a", "--role", "read")  # the environment's name is taken
    assert r.exit_code == 2 and "LABELLOOP_API_TOKENS is named 'a'" in r.output
    r = run("serve", "--workers", "2")
    assert r.exit_code == 2 and "needs a real broker" in r.output
    r = run("webhooks", "register", "-p", "cells", "--ls-project", "1", "--url", "http://x")
    assert r.exit_code == 2 and "LABELLOOP_WEBHOOK_SECRET" in r.output
    monkeypatch.setenv("LABELLOOP_WEBHOOK_SECRET", "s")
    monkeypatch.setenv("LABELLOOP_LABELSTUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABELLOOP_LABELSTUDIO_TOKEN", "t")
    r = run("webhooks", "register", "-p", "cells", "--ls-project", "1", "--url", "ftp://x")
    assert r.exit_code == 2 and "http(s) address" in r.output


def test_db_upgrade_waits_then_names_the_database_problem(monkeypatch):
    monkeypatch.setenv("LABELLOOP_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    r = run("db", "upgrade", "--wait", "1")
    assert r.exit_code == 2 and "does not accept connections after 1 s" in r.output


def test_runs_start_embedded_trains_then_stops_early(project, tmp_path):
    r = run("ingest", str(small_export(tmp_path, n=6)), "--project", "cells")
    assert r.exit_code == 0, r.output
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("epochs: 1\nbatch_size: 2\nimage_size: 64\n")
    r = run("runs", "start", "-p", "cells", "--recipe", str(tiny), "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)["run"]
    # No pool image to select: the model is trained and recorded, nothing is sent out.
    assert first["status"] == "succeeded" and "nothing to select" in first["message"]
    assert first["training"]["status"] == "succeeded" and first["model_version_id"]
    r = run("runs", "start", "-p", "cells", "--json")
    second = json.loads(r.output)["run"]
    assert second["status"] == "stopped" and "no new annotations" in second["message"]
    listed = json.loads(run("runs", "list", "-p", "cells", "--json").output)
    assert [x["status"] for x in listed] == ["stopped", "succeeded"]
    assert json.loads(run("runs", "show", str(first["id"]), "--json").output)["id"] == first["id"]
    r = run("runs", "cancel", str(first["id"]))
    assert r.exit_code == 2 and "already succeeded" in r.output


def test_zero_epochs_and_bad_recipe_files_are_refused_alike_by_train_and_runs_start(
    project, tmp_path
):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    for command in (["train"], ["runs", "start"]):
        r = run(*command, "-p", "cells", "--epochs", "0")
        assert r.exit_code == 2 and "--epochs" in r.output, command
        assert "greater than or equal to 1" in r.output
        r = run(*command, "-p", "cells", "--recipe", str(bad))
        assert r.exit_code == 2 and "bad.yaml" in r.output and "not valid YAML" in r.output


def test_a_recipe_file_means_the_same_in_train_and_runs_start(project, tmp_path):
    """Both read it as overrides of the task's default recipe: the run the pipeline would
    train is the one `train` already trained, so the pipeline stops early."""
    assert run("ingest", str(small_export(tmp_path, n=6)), "--project", "cells").exit_code == 0
    assert run("dataset", "freeze", "-p", "cells").exit_code == 0
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("epochs: 1\nbatch_size: 2\nimage_size: 64\naugment: {hue_shift: 0}\n")
    r = run("train", "-p", "cells", "--recipe", str(tiny), "--json")
    assert r.exit_code == 0, r.output
    trained = json.loads(r.output)["model_version"]
    assert trained["epochs"] == 1
    r = run("runs", "start", "-p", "cells", "--recipe", str(tiny), "--json")
    assert r.exit_code == 0, r.output
    started = json.loads(r.output)["run"]
    assert started["status"] == "stopped", started
    assert started["message"].endswith(f"already trained (model version {trained['id']})")
