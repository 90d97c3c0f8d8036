"""Push targets: one registry that the CLI, pipeline parameters and the push stage read, and
a pipeline run that pushes to CVAT."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from labelloop.errors import ConfigError, InputError
from labelloop.push.targets import NAMES, TARGETS, get_target
from tests.factories import png, small_export

TINY = {"epochs": 1, "batch_size": 2, "image_size": 64}


def test_every_target_loads_and_every_entry_point_offers_the_same_ones():
    from labelloop.cli.main import app
    from labelloop.pipelines.triggers import PUSH_TARGETS, ProjectTriggers

    assert set(NAMES) == {"file", "labelstudio", "cvat"}
    for target in TARGETS.values():
        push = target.load()
        assert list(inspect.signature(push).parameters) == ["ctx", "round_id", "options"]
        assert ProjectTriggers(push_to=target.name).push_to == target.name
    assert PUSH_TARGETS == NAMES
    with pytest.raises(ConfigError, match="choose one of: file, labelstudio, cvat"):
        get_target("dropbox")
    with pytest.raises(ValueError, match="push_to must be one of file, labelstudio, cvat"):
        ProjectTriggers(push_to="dropbox")
    shown = CliRunner().invoke(app, ["push", "--help"], terminal_width=200).output
    assert all(f"{name}:" in shown for name in NAMES), shown


@pytest.fixture
def cvat_ctx(settings_factory):
    """An embedded context with a CVAT server configured but no credentials for it: the
    push gets as far as it can without one."""
    from labelloop.context import Context, set_context
    from labelloop.db import migrate

    settings = settings_factory(
        cvat_url="http://127.0.0.1:9", cvat_token="", cvat_user="", cvat_password=""
    )
    migrate.upgrade(settings.database_url)
    context = Context(settings)
    set_context(context)
    yield context
    set_context(None)
    context.close()


def test_a_pipeline_pushing_to_cvat_writes_the_cvat_file(cvat_ctx, tmp_path):
    """No CVAT server runs here: the run writes the round folder with its 'CVAT for images
    1.1' file, which our reader reads back as the predictions, and then stops at the
    server step, naming what that needs; nothing is recorded as pushed."""
    from labelloop.cvat.reader import read_cvat_xml
    from labelloop.db.models import Push
    from labelloop.ingest import ingest_path
    from labelloop.ingest.records import ReadOptions
    from labelloop.pipelines.dispatch import get_dispatcher, launch
    from labelloop.pipelines.runs import PipelineParams, request_pipeline, run_info
    from labelloop.projects import create_project
    from labelloop.push.stage import round_batch

    ctx = cvat_ctx
    with ctx.db.session() as s:
        create_project(s, "smears", "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, "smears", small_export(tmp_path / "src", n=6))
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        (pool / f"p{i}.png").write_bytes(png(seed=60 + i))
    ingest_path(ctx, "smears", pool)

    params = PipelineParams(push_to="cvat", budget=2, recipe=TINY)
    req = request_pipeline(ctx, "smears", trigger="api", params=params)
    assert run_info(ctx, req.run_id)["params"]["push_to"] == "cvat"
    dispatcher = get_dispatcher(ctx.settings)
    with dispatcher.serving():
        launch(ctx, dispatcher, req)
        deadline = time.monotonic() + 300
        while (run := run_info(ctx, req.run_id))["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, run
            time.sleep(0.3)
    assert run["status"] == "failed" and run["stage"] == "push", run
    assert "cvat-sdk" in run["message"] or "LABELLOOP_CVAT_TOKEN" in run["message"]

    batch = round_batch(ctx, run["state"]["round_id"])
    folder = ctx.settings.data_dir / "exports" / "smears" / "round-001"
    names = (folder / "cvat" / "images.txt").read_text().split()
    assert names == [spec.file_name for spec in batch.specs]
    back = list(read_cvat_xml(folder / "cvat", ReadOptions(image_root=folder / "images")))
    assert [Path(r.uri).name for r in back] == names
    assert all(r.error is None for r in back)
    got = {
        Path(r.uri).name: sorted((sh.kind, sh.label) for a in r.annotations for sh in a.shapes)
        for r in back
    }
    want = {
        spec.file_name: sorted((sh.kind, sh.label) for sh in spec.shapes) for spec in batch.specs
    }
    assert got == want and any(want.values())
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Push)) == 0


def test_a_pipeline_refuses_an_unknown_target_before_it_starts(cvat_ctx):
    from labelloop.pipelines.runs import PipelineParams, request_pipeline
    from labelloop.projects import create_project

    with cvat_ctx.db.session() as s:
        create_project(s, "smears", "segmentation", ["RBC"])
    with pytest.raises(InputError, match="push_to must be one of file, labelstudio, cvat"):
        request_pipeline(cvat_ctx, "smears", trigger="api", params=PipelineParams(push_to="fax"))
