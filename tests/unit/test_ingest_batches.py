"""Records are written in batches (lookups per batch, rows linked before they are
inserted): an ingest across batch boundaries is the same as one record at a time."""

from __future__ import annotations

from labelloop.ingest import ingest_path
from labelloop.ingest.core import BATCH
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
