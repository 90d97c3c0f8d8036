from __future__ import annotations

from collections import Counter

from labelloop.datasets import _ensure_eval_splits, manifest_hash, split_for


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
