"""The strategies that combine signals, each on synthetic scores and embeddings built so
that the one thing it claims to do is the thing that decides the pick."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.errors import InputError
from labelloop.scoring.detection import box_statistics
from labelloop.selection import STRATEGIES, Candidates, get_strategy
from labelloop.selection.clustering import d2_seeding, kmeans, typicality
from labelloop.selection.rounds import class_difficulty


def _blobs(centres, per, spread=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [np.asarray(c, float) + spread * rng.standard_normal((per, len(c))) for c in centres]
    )


def test_every_strategy_declares_what_it_needs():
    for s in STRATEGIES.values():
        assert isinstance(s.needs_embeddings, bool) and isinstance(s.needs_scores, bool)
    needs = {n for n, s in STRATEGIES.items() if s.needs_embeddings}
    assert needs == {"coreset", "hybrid", "badge", "cluster_margin", "detection_aware", "typiclust"}
    assert not STRATEGIES["typiclust"].needs_model  # a cold start


def test_kmeans_and_d2_seeding_find_separated_groups():
    x = _blobs([[5, 0], [0, 5], [-5, 0]], 10)
    assign = kmeans(x, 3, seed=1)
    assert len(set(assign[:10])) == len(set(assign[10:20])) == len(set(assign[20:])) == 1
    assert len(set(assign.tolist())) == 3
    picks = d2_seeding(x, 3, seed=0, initial=np.zeros((1, 2)))
    assert sorted(p // 10 for p in picks) == [0, 1, 2]


def _two_doubtful_groups():
    """Images 1-5: near-duplicates, most uncertain; 6-10: another look, nearly as
    uncertain; 11-15: a third look, settled."""
    ids = list(range(1, 16))
    emb = _blobs([[1, 0, 0], [0, 1, 0], [0, 0, 1]], 5)
    scores = {i: 0.9 - 0.001 * i for i in range(1, 6)}
    scores |= {i: 0.8 - 0.001 * i for i in range(6, 11)}
    scores |= {i: 0.05 for i in range(11, 16)}
    return Candidates(ids=ids, scores=scores, embeddings=lambda: (emb, np.zeros((0, 3))))


def test_badge_takes_doubt_from_both_groups_where_top_k_takes_duplicates():
    cand = _two_doubtful_groups()
    assert get_strategy("uncertainty").rank(cand, 2, 0, {}) == [1, 2]
    spread = 0
    for seed in range(20):
        picks = get_strategy("badge").rank(cand, 2, seed, {})
        assert len(set(picks)) == 2 and all(p <= 10 for p in picks)  # never the settled group
        spread += {(p - 1) // 5 for p in picks} == {0, 1}
    assert spread >= 18


def test_cluster_margin_deals_one_per_group_of_the_doubtful():
    cand = _two_doubtful_groups()
    picks = get_strategy("cluster_margin").rank(cand, 2, 0, {"prefilter": 5})
    assert {(p - 1) // 5 for p in picks} == {0, 1}
    with pytest.raises(InputError, match="prefilter must be at least 1"):
        get_strategy("cluster_margin").rank(cand, 2, 0, {"prefilter": 0})


def test_typicality_is_highest_in_the_dense_middle():
    x = np.vstack([_blobs([[0, 0]], 30, spread=0.1, seed=4), [[3, 3]]])
    typ = typicality(x, 5)
    assert typ.argmin() == 30 and np.linalg.norm(x[typ.argmax()]) < 0.15


def test_typicality_picks_the_middle_of_the_big_groups_not_outliers():
    big = _blobs([[1, 0]], 20, spread=0.05, seed=1)
    mid = _blobs([[0, 1]], 12, spread=0.05, seed=2)
    outliers = np.array([[-1, 0.1], [-0.9, -0.4], [0.2, -1.0]])
    emb = np.vstack([big, mid, outliers])
    ids = list(range(len(emb)))
    cand = Candidates(ids=ids, embeddings=lambda: (emb, np.zeros((0, 2))))
    picks = get_strategy("typiclust").rank(cand, 2, 0, {})
    assert {p < 20 for p in picks} == {True, False} and all(p < 32 for p in picks)
    # The pick from the big group is among its most typical (closest to its centre).
    centre_dist = np.linalg.norm(big - big.mean(0), axis=1)
    first_big = next(p for p in picks if p < 20)
    assert centre_dist[first_big] <= np.sort(centre_dist)[5]
    assert set(get_strategy("coreset").rank(cand, 2, 0, {})) & {32, 33, 34}  # coreset: outliers
    # A group already holding a labelled image is covered: the next pick comes elsewhere.
    labelled = big[:1]
    cand = Candidates(ids=ids, embeddings=lambda: (emb, labelled))
    assert get_strategy("typiclust").rank(cand, 1, 0, {})[0] >= 20


def _box_details(scores_by_class: dict[str, list[float]]) -> dict:
    names = ["RBC", "WBC", "Platelets"]
    s = np.array([v for c in names for v in scores_by_class.get(c, [])], float)
    lab = np.array([names.index(c) for c in names for _ in scores_by_class.get(c, [])])
    counts = {c: len(scores_by_class.get(c, [])) for c in names}
    return {"counts": counts, **box_statistics({"scores": s, "labels": lab}, names)}


def test_box_statistics_per_class():
    d = _box_details({"RBC": [0.5, 0.9], "WBC": [0.99]})
    assert d["box_uncertainty"]["RBC"] == pytest.approx(1.0 + 0.2)
    assert d["count_sd"]["RBC"] == pytest.approx(np.sqrt(0.25 + 0.09))
    assert d["count_sd"]["Platelets"] == 0.0
    assert box_statistics({"probs": np.ones(3)}, ["a"]) == {}


def test_detection_aware_prefers_a_doubtful_hard_rare_class_over_a_dense_rbc_clump():
    details = {
        1: _box_details({"RBC": [0.5] * 30}),  # a dense clump of doubtful RBCs
        2: _box_details({"RBC": [0.95] * 10, "Platelets": [0.5]}),  # one doubtful platelet
        3: _box_details({"RBC": [0.95] * 12}),
    }
    emb = np.eye(3)
    cand = Candidates(
        ids=[1, 2, 3],
        scores={1: 1.0, 2: 1.0, 3: 0.1},  # least_confidence_max cannot tell 1 from 2
        counts={i: d["counts"] for i, d in details.items()},
        labelled_counts={"RBC": 400, "WBC": 20, "Platelets": 10},
        embeddings=lambda: (emb, np.zeros((0, 3))),
        details=details,
        class_difficulty={"RBC": 0.2, "WBC": 0.05, "Platelets": 0.6},
    )
    value = get_strategy("detection_aware").values(cand, {"rarity": 1.0})
    assert value[2] > value[1] > value[3]
    assert get_strategy("detection_aware").rank(cand, 1, 0, {"prefilter": 1})[0] == 2


def test_detection_aware_spreads_over_look_alikes():
    details = {i: _box_details({"RBC": [0.9] * 5, "WBC": [0.6]}) for i in range(1, 7)}
    emb = _blobs([[1, 0], [0, 1]], 3)  # 1-3 look alike, 4-6 look alike
    cand = Candidates(
        ids=list(range(1, 7)),
        scores={i: 0.5 for i in range(1, 7)},
        counts={i: d["counts"] for i, d in details.items()},
        embeddings=lambda: (emb, np.zeros((0, 2))),
        details=details,
    )
    picks = get_strategy("detection_aware").rank(cand, 2, 0, {})
    assert {(p - 1) // 3 for p in picks} == {0, 1}


def test_count_uncertainty_ranks_by_count_spread_not_by_one_doubtful_box():
    details = {
        1: _box_details({"RBC": [0.99] * 40 + [0.5]}),  # one doubtful box: count +-0.5
        2: _box_details({"RBC": [0.6] * 12}),  # every box doubtful: count +-1.7
        3: _box_details({"RBC": [0.99] * 3}),
    }
    cand = Candidates(
        ids=[1, 2, 3],
        scores={1: 1.0, 2: 0.8, 3: 0.02},
        details=details,
        labelled_counts={"RBC": 100},
    )
    assert get_strategy("uncertainty").rank(cand, 1, 0, {}) == [1]
    assert get_strategy("count_uncertainty").rank(cand, 3, 0, {}) == [2, 1, 3]
    # Without count statistics (segmentation) it falls back to the stored score.
    assert get_strategy("count_uncertainty").rank(
        Candidates(ids=[1, 2], scores={1: 0.2, 2: 0.7}), 1, 0, {}
    ) == [2]


def test_class_difficulty_reads_per_class_validation_scores():
    val = {"per_class": {"RBC": {"ap50": 0.9}, "WBC": {"ap50": None, "dice": 0.5}, "x": 3}}
    assert class_difficulty(val) == pytest.approx({"RBC": 0.1, "WBC": 0.5})
    assert class_difficulty({}) == {}
