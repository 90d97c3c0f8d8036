"""Live sync against a real Label Studio server: annotators work through the API, the
project follows incrementally (new, edited, cancelled and deleted annotations)."""

from __future__ import annotations

import json
import uuid

import pytest
from label_studio_sdk.client import LabelStudio
from sqlalchemy import func, select
from typer.testing import CliRunner

from labelloop.datasets.freeze import current_annotations
from labelloop.db.models import Annotation, Image, Project, SourceItem
from labelloop.domain import Box, Polygon, shapes_from_json
from labelloop.errors import InputError
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.push import PushTask, push_tasks
from labelloop.labelstudio.sync import sync_key, sync_labelstudio
from labelloop.projects import create_project
from tests.factories import png, poly, rect

pytestmark = [pytest.mark.integration, pytest.mark.labelstudio]

W, H = 64, 48


def _config(labels: list[str]) -> str:
    values = "".join(f'<Label value="{lab}"/>' for lab in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<RectangleLabels name="box" toName="image">{values}</RectangleLabels>'
        f'<PolygonLabels name="poly" toName="image">{values}</PolygonLabels></View>'
    )


@pytest.fixture
def client(labelstudio) -> LabelStudio:
    return LabelStudio(base_url=labelstudio.url, api_key=labelstudio.token)


@pytest.fixture
def sync(ctx, labelstudio):
    def run(project: str, ls_project: int, **kw):
        return sync_labelstudio(
            ctx, project, labelstudio.url, ls_project, token=labelstudio.token, **kw
        )

    return run


def _ls_project(labelstudio, client, labels: list[str], n_upload: int) -> tuple[int, list[int]]:
    """A project with `n_upload` uploaded images and one image served from local files."""
    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    project = ls.ensure_project(f"sync {uuid.uuid4().hex[:8]}", _config(labels))
    tasks = [
        PushTask(key=f"k{i}", filename=f"cell_{i}.png", image_bytes=png(W, H, seed=i))
        for i in range(n_upload)
    ]
    ids = push_tasks(ls, project, tasks)
    folder = labelstudio.document_root / f"sync-{project}"
    folder.mkdir()
    (folder / "local.png").write_bytes(png(W, H, seed=99))
    client.import_storage.local.create(project=project, path=str(folder), use_blob_urls=True)
    client.projects.import_tasks(
        project, request=[{"data": {"image": f"/data/local-files/?d={folder.name}/local.png"}}]
    )
    all_ids = sorted(t.id for t in client.tasks.list(project=project, fields="task_only"))
    assert all_ids[:n_upload] == sorted(ids.values())
    return project, all_ids


def _counts(ctx) -> dict[str, int]:
    with ctx.db.session() as s:
        return {
            m.__name__: s.scalar(select(func.count()).select_from(m))
            for m in (Image, SourceItem, Annotation)
        }


def _states(ctx, ls_task: int) -> list[tuple[str, str]]:
    """(annotation id, state) of every revision of one task's annotations, oldest first."""
    with ctx.db.session() as s:
        rows = s.execute(
            select(Annotation.external_id, Annotation.state)
            .join(SourceItem, Annotation.source_item_id == SourceItem.id)
            .where(SourceItem.external_id == str(ls_task))
            .order_by(Annotation.id)
        ).all()
    return [(ext.split("/")[1], state) for ext, state in rows]


def _current(ctx) -> dict[str, list]:
    """task id -> shapes of the annotation that counts for its image."""
    with ctx.db.session() as s:
        project = s.scalar(select(Project).where(Project.name == "cells"))
        chosen = current_annotations(s, project.id)
        items = {
            i.image_id: i.external_id
            for i in s.scalars(select(SourceItem).where(SourceItem.project_id == project.id))
        }
        return {items[img]: shapes_from_json(a.shapes) for img, a in chosen.items()}


def test_incremental_sync_follows_annotators(ctx, labelstudio, client, sync):
    with ctx.db.session() as s:
        create_project(s, "cells", "detection", ["RBC", "WBC"])
    ls_project, (t1, t2, t3, t4) = _ls_project(labelstudio, client, ["RBC", "WBC"], 3)
    a1 = client.annotations.create(
        t1,
        result=[
            rect("RBC", 10, 10, 25, 50, rid="r1"),
            poly("WBC", [[50, 50], [75, 50], [75, 75]], rid="p1"),
        ],
    ).id
    a2 = client.annotations.create(t2, result=[rect("WBC", 50, 40, 30, 30, rid="r2")]).id
    a4 = client.annotations.create(t4, result=[rect("RBC", 0, 0, 50, 50, rid="r4")]).id

    first = sync("cells", ls_project)
    assert first.tasks_fetched == 4 and first.changed_task_ids == [t1, t2, t3, t4]
    assert first.ingest.annotations_new == 3
    assert first.ingest.images_new == 4 and first.images_downloaded == 4
    assert first.ingest.unlabeled == 1  # t3 waits for an annotator
    assert first.ingest.shapes_per_class == {"RBC": 2, "WBC": 2}
    assert first.since is None and first.cursor is not None
    assert not first.listed_all_tasks and first.tasks_deleted == 0
    box, polygon = _current(ctx)[str(t1)]
    assert isinstance(box, Box) and isinstance(polygon, Polygon)
    assert (box.x, box.y, box.w, box.h) == pytest.approx((6.4, 4.8, 16.0, 24.0))
    assert polygon.points[1] == pytest.approx((48.0, 24.0))
    after_first = _counts(ctx)
    assert after_first == {"Image": 4, "SourceItem": 4, "Annotation": 3}
    with ctx.db.session() as s:
        assert set(s.scalars(select(Annotation.annotator))) == {labelstudio.username}
    with ctx.db.session() as s:
        project = s.scalar(select(Project).where(Project.name == "cells"))
        state = project.settings["sync"][sync_key(labelstudio.url, ls_project)]
    assert state["updated_at"] == first.cursor

    # Nothing changed: the overlap window lists the recent tasks again but feeds none.
    again = sync("cells", ls_project)
    assert again.tasks_fetched == 4 and again.tasks_unchanged == 4
    assert again.changed_task_ids == [] and again.ingest.annotations_new == 0
    assert sync("cells", ls_project, overlap_s=0).tasks_fetched == 0
    assert _counts(ctx) == after_first

    # An annotator labels t3 and corrects t1: only those two tasks come back.
    client.annotations.create(t3, result=[rect("WBC", 20, 20, 10, 10, rid="r3")])
    client.annotations.update(a1, result=[rect("RBC", 20, 10, 25, 50, rid="r1")])
    second = sync("cells", ls_project, overlap_s=0)
    assert second.tasks_fetched == 2 and second.changed_task_ids == [t1, t3]
    assert second.ingest.annotations_new == 2 and second.ingest.images_new == 0
    # Both tasks were pulled before (t3 as unlabeled): their images are not downloaded again.
    assert second.images_from_store == 2 and second.images_downloaded == 0
    assert _states(ctx, t1) == [(str(a1), "superseded"), (str(a1), "active")]
    (box,) = _current(ctx)[str(t1)]
    assert box.x == pytest.approx(12.8)
    assert _counts(ctx)["Annotation"] == 5  # 3 + the new one + the new revision

    # t2's annotation is deleted, t4's is cancelled (skipped): both stop counting.
    client.annotations.delete(a2)
    client.annotations.update(a4, was_cancelled=True)
    third = sync("cells", ls_project, overlap_s=0)
    assert third.changed_task_ids == [t2, t4]
    assert third.annotations_deleted == 1 and third.ingest.annotations_cancelled == 1
    assert _states(ctx, t2) == [(str(a2), "deleted")]
    assert _states(ctx, t4) == [(str(a4), "superseded"), (str(a4), "skipped")]
    assert set(_current(ctx)) == {str(t1), str(t3)}

    # A task deleted in Label Studio takes its annotations with it.
    client.tasks.delete(str(t3))
    fourth = sync("cells", ls_project, overlap_s=0)
    assert fourth.tasks_fetched == 0 and fourth.tasks_deleted == 1
    assert fourth.annotations_deleted == 1 and fourth.listed_all_tasks
    assert set(_current(ctx)) == {str(t1)}
    # Known deletions are remembered: the next sync compares counts and lists nothing.
    fifth = sync("cells", ls_project, overlap_s=0)
    assert not fifth.listed_all_tasks and fifth.tasks_deleted == 0

    # Pulling everything again writes nothing new.
    before = _counts(ctx)
    full = sync("cells", ls_project, full=True)
    assert full.tasks_fetched == 3 and full.ingest.annotations_new == 0
    assert full.ingest.images_new == 0 and full.images_downloaded == 0
    assert full.tasks_deleted == 0 and not full.listed_all_tasks
    assert _counts(ctx) == before
    assert set(_current(ctx)) == {str(t1)}


def test_unknown_class_fails_until_mapped(ctx, labelstudio, client, sync):
    with ctx.db.session() as s:
        create_project(s, "cells", "detection", ["RBC", "WBC"])
    ls_project, (t1, _) = _ls_project(labelstudio, client, ["RBC", "Lymphocyte"], 1)
    client.annotations.create(t1, result=[rect("Lymphocyte", 10, 10, 20, 20)])

    with pytest.raises(InputError) as err:
        sync("cells", ls_project)
    message = str(err.value)
    assert "Lymphocyte" in message and "--label-map" in message
    assert f"Label Studio project {ls_project}" in message
    assert _counts(ctx) == {"Image": 0, "SourceItem": 0, "Annotation": 0}
    with ctx.db.session() as s:
        assert s.scalar(select(Project).where(Project.name == "cells")).settings == {}

    report = sync("cells", ls_project, label_map={"Lymphocyte": "WBC"})
    assert report.ingest.shapes_per_class == {"WBC": 1}
    assert report.ingest.annotations_new == 1


def test_images_outside_the_server_are_refused_per_task(ctx, labelstudio, client, sync):
    with ctx.db.session() as s:
        create_project(s, "cells", "detection", ["RBC", "WBC"])
    ls_project, _ = _ls_project(labelstudio, client, ["RBC", "WBC"], 1)
    client.projects.import_tasks(
        ls_project,
        request=[
            {"data": {"image": "https://images.example.org/a.png"}},
            {"data": {"image": "s3://slides/b.png"}},
        ],
    )
    with pytest.raises(InputError) as err:
        sync("cells", ls_project)
    assert "images.example.org" in str(err.value) and "LABELLOOP_LABELSTUDIO_IMAGE_HOSTS" in str(
        err.value
    )
    assert err.value.record is not None and err.value.record.startswith("task ")
    assert _counts(ctx)["SourceItem"] == 0

    report = sync("cells", ls_project, skip_invalid=True)
    assert report.ingest.images_new == 2
    reasons = {sk.record: sk.reason for sk in report.ingest.skipped}
    assert len(reasons) == 2
    assert any("s3://slides" in r for r in reasons.values())
    assert labelstudio.token not in json.dumps(report.to_dict())


def test_cli_reports_json_and_never_prints_the_token(tmp_path, labelstudio, client, monkeypatch):
    from labelloop.cli.main import app

    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LABELLOOP_LABELSTUDIO_TOKEN", labelstudio.token)
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    ls_project, ids = _ls_project(labelstudio, client, ["RBC", "WBC"], 1)
    client.annotations.create(ids[0], result=[rect("RBC", 10, 10, 20, 20)])
    runner = CliRunner()
    r = runner.invoke(
        app, ["project", "create", "cells", "--task", "detection", "--labels", "RBC,WBC"]
    )
    assert r.exit_code == 0, r.output
    args = ["sync", "labelstudio", "-p", "cells", "--url", labelstudio.url]
    r = runner.invoke(app, [*args, "--ls-project", str(ls_project), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["changed_task_ids"] == ids
    assert report["ingest"]["shapes_per_class"] == {"RBC": 1}
    assert labelstudio.token not in r.output

    # `ingest labelstudio` is the same incremental pull: only the edited task comes back.
    client.annotations.create(ids[0], result=[rect("WBC", 40, 40, 20, 20)])
    ingest = ["ingest", "labelstudio", "-p", "cells", "--url", labelstudio.url]
    r = runner.invoke(app, [*ingest, "--ls-project", str(ls_project), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    assert again["changed_task_ids"] == ids[:1] and again["ingest"]["annotations_new"] == 1
    r = runner.invoke(app, ["ingest", "labelstudio", "-p", "cells"])
    assert r.exit_code == 2 and "--ls-project" in r.output

    monkeypatch.setenv("LABELLOOP_LABELSTUDIO_TOKEN", "0" * 40)
    r = runner.invoke(app, [*args, "--ls-project", str(ls_project)])
    assert r.exit_code == 2
    assert "HTTP 401" in r.output and "0" * 40 not in r.output


def test_shapes_a_segmentation_model_cannot_learn_from_are_refused(ctx, labelstudio, client, sync):
    """A rectangle drawn in a segmentation project says where a cell is, not its pixels:
    the sync refuses it by name instead of training on an image that looks unannotated."""
    with ctx.db.session() as s:
        create_project(s, "cells", "segmentation", ["RBC", "WBC"])
    ls_project, (t1, t2, _) = _ls_project(labelstudio, client, ["RBC", "WBC"], 2)
    client.annotations.create(t1, result=[poly("RBC", [[10, 10], [40, 10], [25, 40]])])
    client.annotations.create(t2, result=[rect("WBC", 5, 5, 20, 20, rid="r2")])

    with pytest.raises(InputError) as err:
        sync("cells", ls_project)
    message = str(err.value)
    assert f"task {t2}" in message and "rectanglelabels" not in message
    assert "1 box shape(s) (WBC) cannot train a segmentation model" in message
    assert "mask or polygon tool" in message and "--skip-invalid" in message
    assert _counts(ctx) == {"Image": 0, "SourceItem": 0, "Annotation": 0}

    report = sync("cells", ls_project, skip_invalid=True)
    assert report.ingest.annotations_new == 1
    assert [sk.record.split(" / ")[0] for sk in report.ingest.skipped] == [f"task {t2}"]
    assert {k: [s.kind for s in v] for k, v in _current(ctx).items()} == {str(t1): ["polygon"]}
