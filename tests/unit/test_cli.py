"""The command line as a user meets it: JSON output, exit code 2 with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from labelloop.cli.main import app
from labelloop.cli.render import selection_order
from tests.factories import small_export

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "data"


def run(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_every_stage():
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("ingest", "dataset", "train", "score", "select", "push", "status", "demo", "db"):
        assert cmd in result.output


def test_project_ingest_freeze_status_json(tmp_path):
    r = run(
        "project",
        "create",
        "cells",
        "--task",
        "segmentation",
        "--labels",
        "RBC,WBC,Platelets",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["created"] is True
    export = small_export(tmp_path, n=4)
    r = run("ingest", str(export), "--project", "cells", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["shapes_per_class"] == {"RBC": 4, "WBC": 4, "Platelets": 4}
    assert report["skipped"] == []
    r = run("dataset", "freeze", "--project", "cells", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["number"] == 1
    r = run("status", "--project", "cells", "--json")
    st = json.loads(r.output)
    assert st["images"] == {"total": 4, "labelled": 4, "unlabeled": 0}
    assert st["annotations_per_class"]["WBC"] == 4
    assert len(st["dataset_versions"]) == 1 and st["model_versions"] == []


def test_unknown_task_is_exit_2_with_choices():
    r = run("project", "create", "x", "--task", "tracking", "--labels", "A")
    assert r.exit_code == 2
    assert "unknown task 'tracking'" in r.output and "segmentation" in r.output


def test_project_draw_chooses_one_tool_of_the_task(tmp_path):
    run("project", "create", "seg", "--task", "segmentation", "--labels", "RBC")
    r = run("project", "draw", "seg", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["draw"] == "mask"
    r = run("project", "draw", "seg", "polygon", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["draw"] == "polygon"
    assert json.loads(run("project", "draw", "seg", "--json").stdout)["draw"] == "polygon"
    r = run("project", "draw", "seg", "box")
    assert r.exit_code == 2 and "draws mask or polygon, not 'box'" in r.output


def test_missing_project_names_existing_ones(tmp_path):
    run("project", "create", "alpha", "--task", "segmentation", "--labels", "A")
    r = run("status", "--project", "beta", "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["type"] == "NotFoundError"
    assert "alpha" in r.output


def test_ingest_of_a_clashing_export_is_exit_2_until_named(tmp_path):
    run("project", "create", "cells", "--task", "segmentation", "--labels", "RBC,WBC,Platelets")
    first = small_export(tmp_path / "a", n=2)
    assert run("ingest", str(first), "--project", "cells").exit_code == 0
    other = small_export(tmp_path / "b", n=2, seed=50)
    r = run("ingest", str(other), "--project", "cells")
    assert r.exit_code == 2 and "--source NAME" in r.output, r.output
    r = run("ingest", str(other), "--project", "cells", "--source", "b", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["images_new"] == 2, r.output
    r = run("ingest", str(other), "--project", "cells", "--edit", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["images_existing"] == 2, r.output


def test_ingest_missing_file_is_exit_2(tmp_path):
    run("project", "create", "cells", "--task", "segmentation", "--labels", "RBC")
    r = run("ingest", str(tmp_path / "nope.json"), "--project", "cells")
    assert r.exit_code == 2
    assert "nope.json" in r.output and "no such file" in r.output


def test_select_without_a_model_explains_what_to_do(tmp_path):
    run("project", "create", "cells", "--task", "segmentation", "--labels", "RBC,WBC,Platelets")
    run("ingest", str(small_export(tmp_path, n=2)), "--project", "cells")
    r = run("select", "--project", "cells", "--budget", "3")
    assert r.exit_code == 2
    assert "run `labelloop train`" in r.output


def test_console_script_exit_code(tmp_path, data_dir):
    """The installed entry point, as a shell sees it."""
    exe = [sys.executable, "-m", "labelloop.cli", "status", "--project", "none"]
    proc = subprocess.run(
        exe,
        capture_output=True,
        text=True,
        env={"LABELLOOP_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "no project named 'none'" in proc.stderr


def test_ingest_help_names_every_registered_format():
    from labelloop.ingest.formats import formats

    result = run("ingest", "--help")
    for name in formats():
        assert name in result.output


def test_pipeline_run_through_the_embedded_worker(tmp_path):
    from tests.factories import png

    run("project", "create", "pipe", "--task", "segmentation", "--labels", "RBC,WBC,Platelets")
    export = small_export(tmp_path / "src", n=6)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(4):
        (pool / f"u{i}.png").write_bytes(png(seed=30 + i))
    r = run(
        "pipeline",
        "run",
        "--project",
        "pipe",
        "--budget",
        "2",
        "--epochs",
        "1",
        "--source",
        str(export),
        "--source",
        str(pool),
        "--json",
    )
    assert r.exit_code == 0, r.output
    state = json.loads(r.stdout)
    assert [i["format"] for i in state["ingests"]] == ["labelstudio", "images"]
    assert state["score"]["scored"] == 4
    assert {"dataset_version_id", "model_version_id", "round_id", "push_id"} <= set(state)
    st = json.loads(run("status", "--project", "pipe", "--json").stdout)
    assert st["model_versions"][0]["epochs"] == 1
    assert st["rounds"][0]["size"] == 2 and st["rounds"][0]["pushes"][0]["tasks"] == 2


def test_every_command_has_a_help_line():
    import click
    from typer.main import get_command

    def walk(group: click.Group, path: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{path} {name}")
            else:
                assert (command.help or "").strip(), f"{path} {name} has no help"

    walk(get_command(app), "labelloop")


def _commands(cmd, prefix: str = ""):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, f"{prefix} {name}".strip())
    else:
        yield prefix, cmd


def test_every_command_turns_errors_and_outages_into_exit_2():
    """The one handler (`handle_errors`) wraps every command, the plugins' included: a
    command without it would print a traceback for a service that is down."""
    import typer

    commands = dict(_commands(typer.main.get_command(app)))
    assert {"train", "status", "runs start", "demo"} <= set(commands)
    bare = [
        name for name, cmd in commands.items() if not getattr(cmd.callback, "handles_errors", 0)
    ]
    assert bare == []


def test_a_database_that_is_down_is_one_line_and_exit_2(monkeypatch):
    """Nothing listens on the port: one line naming the database and its URL without the
    password, and what to do; no traceback."""
    from tests.integration.services import free_port

    url = f"postgresql+psycopg://ml:s3cretpw@127.0.0.1:{free_port()}/labelloop"
    monkeypatch.setenv("LABELLOOP_DATABASE_URL", url)
    r = subprocess.run(
        [sys.executable, "-m", "labelloop.cli", "status", "--project", "cells"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "the database is unreachable at postgresql+psycopg://127.0.0.1:" in lines[0]
    assert "LABELLOOP_DATABASE_URL" in lines[0] and "s3cretpw" not in r.stderr + r.stdout


def _frozen_project(tmp_path) -> None:
    run("project", "create", "cells", "--task", "segmentation", "--labels", "RBC,WBC,Platelets")
    assert run("ingest", str(small_export(tmp_path, n=4)), "--project", "cells").exit_code == 0
    assert run("dataset", "freeze", "--project", "cells").exit_code == 0


def _training_runs() -> int:
    from sqlalchemy import func, select

    from labelloop.config import Settings
    from labelloop.context import Context
    from labelloop.db.models import TrainingRun

    with Context(Settings()).db.session() as s:
        return s.scalar(select(func.count()).select_from(TrainingRun))


def test_train_with_redis_down_is_one_line_and_leaves_no_queued_run(tmp_path, monkeypatch):
    from tests.integration.services import free_port

    _frozen_project(tmp_path)
    monkeypatch.setenv("LABELLOOP_REDIS_URL", f"redis://:pw@127.0.0.1:{free_port()}/0")
    r = run("train", "--project", "cells", "--epochs", "1")
    assert r.exit_code == 2, r.output
    assert "Redis is unreachable at redis://127.0.0.1:" in r.output and "pw@" not in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert _training_runs() == 0


def test_train_while_the_project_is_locked_leaves_no_queued_run(tmp_path):
    """The lock's name is printed as it is (Rich would turn `:lock:` into an emoji)."""
    from labelloop.config import Settings
    from labelloop.locks import lock_name, project_lock

    _frozen_project(tmp_path)
    with project_lock(Settings(), "cells"):
        r = run("train", "--project", "cells", "--epochs", "1")
    assert r.exit_code == 2, r.output
    assert lock_name("cells") in r.output or "held" in r.output
    assert "\N{LOCK}" not in r.output
    assert _training_runs() == 0


def test_a_rounds_title_says_least_confident_first_only_for_uncertainty():
    assert selection_order("uncertainty") == "least confident first"
    assert "least confident" not in selection_order("random")
    hybrid = selection_order("hybrid")
    assert "least confident" not in hybrid and "hybrid" in hybrid
