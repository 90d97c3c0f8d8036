"""Records are written in batches (lookups per batch, rows linked before they are
inserted): an ingest across batch boundaries is the same as one record at a time."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select

from labelloop.db.models import Annotation, Project
from labelloop.domain import Box, Polygon, shapes_to_json
from labelloop.ingest import ingest_path, ingest_records
from labelloop.ingest.core import BATCH, revision_of
from labelloop.ingest.records import RecordAnnotation, SourceRecord
from tests.factories import png, rect, task, write_export
from tests.unit.ingest_fixtures import make_project, row_counts


def test_many_batches_ingest_once_and_reingest_unchanged(ctx, tmp_path):
    n = BATCH + 7
    images = {"images/a.png": png(seed=1), "images/b.png": png(seed=2)}
    tasks = [
        task(i, f"images/{'ab'[i % 2]}.png", [[rect("RBC", 1 + i % 50, 1, 5, 5)]]) for i in range(n)
    ]
    export = write_export(tmp_path, tasks, images)
    make_project(ctx, "cells", "detection", ["RBC"])
    first = ingest_path(ctx, "cells", export)
    assert (first.records, first.images_new, first.annotations_new) == (n, 2, n)
    assert row_counts(ctx) == {"Image": 2, "SourceItem": n, "Annotation": n}
    again = ingest_path(ctx, "cells", export)
    assert (again.annotations_new, again.annotations_unchanged) == (0, n)
    # an edit in the second batch supersedes exactly its own earlier revision
    tasks[-1] = task(n - 1, "images/b.png", [[rect("RBC", 9, 9, 9, 9)]])
    export = write_export(tmp_path, tasks, images)
    edited = ingest_path(ctx, "cells", export, edit=True)  # the task's image was replaced
    assert (edited.annotations_new, edited.annotations_unchanged) == (1, n - 1)
    assert row_counts(ctx) == {"Image": 2, "SourceItem": n, "Annotation": n + 1}


def test_revision_is_the_sorted_json_of_shapes_ground_truth_and_cancelled():
    """The revision is hashed around the stored JSON text, not a second dump: its bytes
    must stay those revisions were always hashed from, or a re-ingest of an unchanged
    export would write every annotation again."""
    shapes = [
        Box(label="RBC", x=1.5, y=2, w=3, h=4),
        Polygon(label="WBC", points=[(0, 0), (4, 0), (0, 4)]),
    ]
    for gt, cancelled in [(False, False), (True, False), (False, True)]:
        ann = RecordAnnotation("a", shapes, ground_truth=gt, cancelled=cancelled)
        payload = {"shapes": shapes_to_json(shapes), "gt": gt, "x": cancelled}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        assert revision_of(ann) == hashlib.sha256(blob).hexdigest()[:32]


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_a_revision_written_earlier_in_the_batch_is_superseded(ctx, tmp_path, skip_invalid):
    """Two files of one ingest give the same annotation different shapes: the second
    supersedes the first although both are in one batch (with savepoints the first is
    already inserted when the second comes)."""
    make_project(ctx, "cells", "detection", ["RBC"])

    def record(file: str, x: float) -> SourceRecord:
        shapes = [Box(label="RBC", x=x, y=1, w=5, h=5)]
        return SourceRecord(
            source="s",
            external_id="1",
            uri="a.png",
            file=file,
            load=png,
            annotations=[RecordAnnotation("a", shapes)],
        )

    with ctx.db.session() as s:
        project = s.scalars(select(Project)).one()
        report = ingest_records(
            s, ctx.blobs, project, [record("f1", 1), record("f2", 2)], skip_invalid=skip_invalid
        )
    assert report.annotations_new == 2
    with ctx.db.session() as s:
        rows = s.scalars(select(Annotation).order_by(Annotation.id)).all()
        assert [(a.state, a.shapes[0]["x"]) for a in rows] == [("superseded", 1), ("active", 2)]
