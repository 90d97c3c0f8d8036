"""`ingest --dry-run`: what would be read, per file, with every problem, and nothing
written (no rows, no blobs)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from labelloop.cli.main import app
from labelloop.ingest import ingest_path
from tests.factories import png, poly, rect, task, write_export
from tests.unit.ingest_fixtures import NOTHING, make_project, row_counts


def _export(tmp_path):
    images = {f"images/{i}.png": png(seed=i) for i in range(3)}
    tasks = [
        task(0, "images/0.png", [[rect("RBC", 1, 1, 5, 5), rect("WBC", 9, 9, 5, 5, rid="r2")]]),
        task(1, "images/1.png", [[poly("RBC", [(1, 1), (9, 1), (9, 9)])]]),
        task(2, "images/2.png", [[rect("Tumour", 1, 1, 5, 5)]]),  # not a project label
    ]
    return write_export(tmp_path, tasks, images)


def _blob_files(ctx) -> list:
    root = ctx.blobs.local_path("images")
    return list(root.rglob("*")) if root and root.exists() else []


def test_dry_run_reports_per_file_and_writes_nothing(ctx, tmp_path):
    export = _export(tmp_path)
    make_project(ctx, "cells", "detection", ["RBC", "WBC"])
    report = ingest_path(ctx, "cells", export, dry_run=True)
    assert report.dry_run and report.images_new == 2
    assert report.files == {
        str(export): {
            "records": 3,
            "images": 2,
            "unlabeled": 0,
            "shapes_per_kind": {"box": 2, "polygon": 1},
            "shapes_per_class": {"RBC": 2, "WBC": 1},
            "skipped": 1,
        }
    }
    assert [s.record for s in report.skipped] == ["task 2 / annotation 200"]
    assert "Tumour" in report.skipped[0].reason
    assert row_counts(ctx) == NOTHING and _blob_files(ctx) == []


def test_cli_dry_run_prints_each_file_and_leaves_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    export = _export(tmp_path)
    r = runner.invoke(
        app, ["project", "create", "cells", "--task", "detection", "--labels", "RBC,WBC"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ingest", str(export), "--project", "cells", "--dry-run"])
    # It answers as the ingest would: the record with a label outside the project fails
    # it, so the check exits 2 (`ingest --dry-run && ingest` never half-works).
    assert r.exit_code == 2, r.output
    assert "dry run, nothing written" in r.output
    said = " ".join(r.output.split())
    assert "2 images (0 unlabeled); shapes box 2, polygon 1; labels RBC 2, WBC 1; 1 skipped" in said
    assert "Tumour" in r.output
    assert "dry run: 1 record(s) would fail the ingest, the first task 2 / annotation 200" in said
    assert "pass --skip-invalid to ingest the rest" in said
    args = ["ingest", str(export), "--project", "cells", "--dry-run", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2  # one JSON document, saying how many records would fail
    assert json.loads(r.stdout)["would_fail"] == 1
    r = runner.invoke(app, [*args, "--skip-invalid"])
    assert r.exit_code == 0, r.output  # with --skip-invalid the ingest would succeed
    said = json.loads(r.stdout)
    assert said["would_fail"] == 0 and said["skipped"][0]["record"] == "task 2 / annotation 200"
    # A live pull cannot be checked this way, and says so rather than writing.
    r = runner.invoke(
        app, ["ingest", "labelstudio", "-p", "cells", "--ls-project", "3", "--dry-run"]
    )
    assert r.exit_code == 2 and "cannot be dry-run" in r.output
    r = runner.invoke(app, ["status", "--project", "cells", "--json"])
    assert json.loads(r.output)["images"]["total"] == 0
    assert not list((tmp_path / "data").rglob("*.png"))


def test_an_export_saved_with_a_byte_order_mark_is_found_in_its_folder(ctx, tmp_path):
    """Windows editors save UTF-8 with a BOM; the export given by folder is still found
    (it was found only when named as a file)."""
    from labelloop.ingest.formats import detect_format

    export = _export(tmp_path)
    export.write_bytes(b"\xef\xbb\xbf" + export.read_bytes())
    assert detect_format(tmp_path) == "labelstudio"
    make_project(ctx, "cells", "detection", ["RBC", "WBC"])
    report = ingest_path(ctx, "cells", tmp_path, dry_run=True)
    assert report.images_new == 2 and report.shapes_per_class == {"RBC": 2, "WBC": 1}
