from __future__ import annotations

from collections import Counter

from labelloop.datasets.freeze import _ensure_eval_splits, manifest_hash, split_for


def test_split_is_a_pure_function_of_seed_and_group():
    fr = (0.7, 0.15, 0.15)
    a = [split_for(f"sha:{i}", 0, fr) for i in range(2000)]
    assert a == [split_for(f"sha:{i}", 0, fr) for i in range(2000)]
    counts = Counter(a)
    assert abs(counts["train"] / 2000 - 0.7) < 0.04
    assert abs(counts["test"] / 2000 - 0.15) < 0.03
    assert a != [split_for(f"sha:{i}", 1, fr) for i in range(2000)]


def test_small_sets_still_get_val_and_test():
    items = [{"image_id": i, "split": "train"} for i in range(5)]
    groups = {i: f"g{i}" for i in range(5)}
    _ensure_eval_splits(items, groups)
    c = Counter(it["split"] for it in items)
    assert c["test"] == 1 and c["val"] == 1 and c["train"] == 3


def test_groups_move_together():
    items = [{"image_id": i, "split": "train"} for i in range(6)]
    groups = {0: "p1", 1: "p1", 2: "p2", 3: "p2", 4: "p3", 5: "p3"}
    _ensure_eval_splits(items, groups)
    by_group: dict[str, set[str]] = {}
    for it in items:
        by_group.setdefault(groups[it["image_id"]], set()).add(it["split"])
    assert all(len(s) == 1 for s in by_group.values())


def _manifest(items):
    return {"labels": ["A"], "project": {"task": "segmentation"}, "split_seed": 0, "items": items}


def test_manifest_hash_ignores_database_ids_but_not_content():
    it = {"image_id": 1, "sha256": "aa", "split": "train", "shapes": [{"label": "A"}]}
    h1 = manifest_hash(_manifest([it]))
    assert manifest_hash(_manifest([{**it, "image_id": 99}])) == h1
    assert manifest_hash(_manifest([{**it, "split": "test"}])) != h1
    assert manifest_hash(_manifest([{**it, "shapes": []}])) != h1


def test_zero_fractions_stay_empty_and_pinned_images_never_move():
    items = [{"image_id": i, "split": "train"} for i in range(5)]
    groups = {i: f"g{i}" for i in range(5)}
    _ensure_eval_splits(items, groups, (1.0, 0.0, 0.0))
    assert {it["split"] for it in items} == {"train"}
    items = [{"image_id": i, "split": "test" if i == 0 else "train"} for i in range(4)]
    _ensure_eval_splits(items, {i: f"g{i}" for i in range(4)}, (0.7, 0.15, 0.15), {0, 1})
    assert [it["split"] for it in items][:2] == ["test", "train"]  # 1 is pinned to train


def test_ingest_split_pins_images_in_every_version(ctx, tmp_path):
    import pytest

    from labelloop.datasets.freeze import freeze
    from labelloop.errors import InputError
    from labelloop.ingest import ingest_path
    from labelloop.projects import create_project
    from tests.factories import png, rect, small_export, task, write_export

    with ctx.db.session() as s:
        create_project(s, "pin", "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, "pin", small_export(tmp_path / "a", n=4), split="test", source="held-out")
    more = {f"images/m{i}.png": png(seed=100 + i) for i in range(20)}
    tasks = [task(50 + i, f"images/m{i}.png", [[rect("RBC", 5, 5, 20, 20)]]) for i in range(20)]
    ingest_path(ctx, "pin", write_export(tmp_path / "b", tasks, more), source="train-set")
    first = freeze(ctx, "pin").stats
    assert first["images"] == 24 and first["splits"]["test"] >= 4
    with ctx.db.session() as s:
        from sqlalchemy import select

        from labelloop.db.models import DatasetItem, SourceItem

        pinned = set(s.scalars(select(SourceItem.image_id).where(SourceItem.source == "held-out")))
        splits = dict(s.execute(select(DatasetItem.image_id, DatasetItem.split)).all())
    assert all(splits[i] == "test" for i in pinned)
    with pytest.raises(InputError, match="split must be train, val or test"):
        ingest_path(ctx, "pin", tmp_path / "a", split="holdout")
