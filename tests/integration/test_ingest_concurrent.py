"""Ingests that run at the same time on PostgreSQL: two exports sharing an image both land,
with the image stored once (the race on its content hash used to end the second ingest
with an IntegrityError on `uq_image_sha256`)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

from labelloop.context import Context
from labelloop.db.models import Image, SourceItem
from labelloop.ingest import ingest_path
from labelloop.projects import create_project
from tests.factories import png, rect, task, write_export

pytestmark = pytest.mark.integration


def _export(folder, pixels: list[int]):
    images = {f"images/{i}.png": png(seed=seed) for i, seed in enumerate(pixels)}
    tasks = [
        task(i + 1, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(len(pixels))
    ]
    return write_export(folder, tasks, images)


def test_two_ingests_sharing_an_image_both_land(service_settings, tmp_path):
    ctx = Context(service_settings)
    project = f"race-{uuid.uuid4().hex[:6]}"
    with ctx.db.session() as s:
        create_project(s, project, "segmentation", ["RBC", "WBC"])
    shared = 9000 + uuid.uuid4().int % 1000  # pixels no other test stored
    first = _export(tmp_path / "a", [shared, shared + 1])
    second = _export(tmp_path / "b", [shared])
    wrote_shared = threading.Event()
    errors: list[BaseException] = []

    def hold_after_first_record(n: int) -> None:
        if n == 1:  # the shared image is inserted, not yet committed
            wrote_shared.set()
            time.sleep(3)  # the other ingest reaches its insert meanwhile and waits on us

    def ingest(path, source, on_record=None) -> None:
        try:
            ingest_path(ctx, project, path, source=source, on_record=on_record)
        except BaseException as exc:
            errors.append(exc)

    a = threading.Thread(target=ingest, args=(first, "instance-a", hold_after_first_record))
    a.start()
    assert wrote_shared.wait(60)
    b = threading.Thread(target=ingest, args=(second, "instance-b"))
    b.start()
    a.join(120)
    b.join(120)
    assert errors == []
    with ctx.db.session() as s:
        items = s.scalars(
            select(SourceItem)
            .join(Image)
            .where(SourceItem.source.in_(["instance-a", "instance-b"]))
        ).all()
        assert len(items) == 3
        shared_ids = {i.image_id for i in items if i.external_id == "1"}
        assert len(shared_ids) == 1
        (image_id,) = shared_ids
        sha = s.get(Image, image_id).sha256
        assert s.scalar(select(func.count()).select_from(Image).where(Image.sha256 == sha)) == 1
