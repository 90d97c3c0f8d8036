"""Strategies rank what they are given; the stage keeps the rules (labelled, open rounds,
budget, batches) and stores embeddings for diversity."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.datasets.freeze import freeze
from labelloop.errors import InputError
from labelloop.runs import execute_run, request_run
from labelloop.scoring.stage import score_pool
from labelloop.selection import Candidates, default_strategy, get_strategy, select_round
from labelloop.selection.kcenter import kcenter_greedy
from labelloop.selection.registry import check_params
from tests.factories import TINY_RECIPE, trained_project


def test_kcenter_covers_clusters_before_filling_one():
    rng = np.random.default_rng(0)
    centres = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], float)
    pool = np.concatenate([c + 0.01 * rng.standard_normal((10, 3)) for c in centres])
    picks = kcenter_greedy(pool, np.zeros((0, 3)), 4, seed=3)
    assert sorted(p // 10 for p in picks) == [0, 1, 2, 3]  # one per cluster
    # Labelled points near cluster 0 and 1: the next picks come from clusters 2 and 3.
    picks = kcenter_greedy(pool, centres[:2], 2)
    assert sorted(p // 10 for p in picks) == [2, 3]
    assert kcenter_greedy(pool, centres, 100) and len(kcenter_greedy(pool, centres, 100)) == 40


def _cand(**kw) -> Candidates:
    return Candidates(ids=[1, 2, 3, 4, 5, 6], **kw)


def test_hybrid_keeps_doubt_and_drops_near_duplicates():
    scores = {1: 0.9, 2: 0.89, 3: 0.88, 4: 0.5, 5: 0.2, 6: 0.1}
    emb = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [0.7, 0.7], [-1, 0]], float)
    cand = _cand(scores=scores, embeddings=lambda: (emb, np.zeros((0, 2))))
    top = get_strategy("uncertainty").rank(cand, 2, 0, {})
    assert top == [1, 2]  # two near-identical images
    hybrid = get_strategy("hybrid").rank(cand, 2, 0, {"prefilter": 2.0})
    assert set(hybrid) <= {1, 2, 3, 4} and 4 in hybrid  # doubtful and different
    with pytest.raises(InputError, match="prefilter must be at least 1"):
        get_strategy("hybrid").rank(cand, 2, 0, {"prefilter": 0.5})


def test_power_draws_in_proportion_to_uncertainty():
    power = get_strategy("power")
    scores = {1: 0.4, 2: 0.2, 3: 0.2, 4: 0.1, 5: 0.1, 6: 0.0}
    cand = _cand(scores=scores)
    one = {"beta": 1}
    firsts = np.bincount([power.rank(cand, 1, s, one)[0] for s in range(4000)], minlength=7)
    # Gumbel top-k: the first pick is image i with probability s_i / sum(s).
    assert np.allclose(firsts[1:] / 4000, [0.4, 0.2, 0.2, 0.1, 0.1, 0.0], atol=0.025)
    batch = power.rank(cand, 6, 7, {})
    assert sorted(batch) == [1, 2, 3, 4, 5, 6] and batch == power.rank(cand, 6, 7, {})
    default = np.bincount([power.rank(cand, 1, s, {})[0] for s in range(4000)], minlength=7)
    assert default[1] / 4000 > 0.8  # the default beta 4: 0.4^4 / sum(s^4) = 0.88
    # Equal doubt is a uniform draw; beta 0 ignores the scores, a large beta is top-k.
    level = _cand(scores=dict.fromkeys(range(1, 7), 0.3))
    firsts = np.bincount([power.rank(level, 1, seed, {})[0] for seed in range(3000)])
    assert firsts[1:].min() > 400
    uniform = np.bincount([power.rank(cand, 1, s, {"beta": 0})[0] for s in range(3000)])
    assert uniform[1:].min() > 400
    steep = power.rank(cand, 3, 0, {"beta": 60})  # 2 and 3 tie: either order
    assert steep[0] == 1 and set(steep) == set(get_strategy("uncertainty").rank(cand, 3, 0, {}))
    for bad in (-1, "steep", None):
        with pytest.raises(InputError, match="beta must be a number >= 0"):
            power.rank(cand, 2, 0, {"beta": bad})
    with pytest.raises(InputError, match="finite and >= 0"):
        power.rank(_cand(scores={1: -0.1}), 1, 0, {})


def test_class_balance_prefers_images_predicted_to_hold_rare_cells():
    scores = {i: 0.5 for i in range(1, 7)}
    counts = {i: {"RBC": 20, "WBC": 0} for i in range(1, 7)}
    counts[5] = {"RBC": 18, "WBC": 2}
    cand = _cand(scores=scores, counts=counts, labelled_counts={"RBC": 500, "WBC": 5})
    assert get_strategy("class_balance").rank(cand, 1, 0, {})[0] == 5
    assert get_strategy("uncertainty").rank(cand, 1, 0, {})[0] == 1  # ties: lowest id


def test_count_uncertainty_sends_the_least_certain_counts_first():
    scores = {i: 0.5 for i in range(1, 7)}
    scores[6] = 0.9  # most uncertain pixels, but a sure count
    iv = {i: {"RBC": {"expected": 20, "low": 19, "high": 21}} for i in range(1, 7)}
    iv[3] = {"RBC": {"expected": 20, "low": 14, "high": 26}, "WBC": {"low": 0, "high": 1}}
    iv[4] = {"RBC": {"expected": 20, "low": 16, "high": 24}}
    cand = _cand(scores=scores, count_intervals=iv)
    assert get_strategy("count_uncertainty").rank(cand, 3, 0, {}) == [3, 4, 6]


def test_params_are_checked_against_the_strategy():
    with pytest.raises(InputError, match="has no parameter alpha; valid: prefilter"):
        check_params(get_strategy("hybrid"), {"alpha": 1})
    with pytest.raises(InputError, match="valid: none"):
        check_params(get_strategy("random"), {"x": 1})
    # Every parameter is a number: a word, a list, a flag or a non-finite value is refused
    # by name before any strategy ranks; a number or a string that reads as one passes.
    for bad in ("wide", [3], True, None, float("nan"), "inf"):
        with pytest.raises(InputError, match="parameter prefilter must be a number"):
            check_params(get_strategy("hybrid"), {"prefilter": bad})
    for good in (4, 2.5, "4"):
        assert check_params(get_strategy("hybrid"), {"prefilter": good}) == {"prefilter": good}
    with pytest.raises(InputError, match="choose one of: badge, class_balance"):
        get_strategy("bald")


@pytest.fixture
def project(ctx, tmp_path):
    trained_project(ctx, "sel", tmp_path, labelled=6, pool=8, pool_seed=70, train=False)
    return "sel"


def test_cold_start_coreset_on_pixels_then_rounds_with_batches(ctx, project):
    with pytest.raises(InputError, match="needs a trained model"):
        select_round(ctx, project, budget=3, strategy="uncertainty")
    cold = select_round(ctx, project, budget=5, strategy="coreset", batch_size=2)
    assert len(cold.items) == 5 and cold.created
    # Dealt round-robin into ceil(5 / 2) = 3 batches of at most 2.
    assert [cold.batches[i] for i, _, _ in cold.items] == [1, 2, 3, 1, 2]
    again = select_round(ctx, project, budget=5, strategy="coreset", batch_size=2)
    assert (again.round_id, again.created, again.batches) == (cold.round_id, False, cold.batches)


def test_scoring_several_methods_stores_embeddings_for_diversity(ctx, project):
    dv = freeze(ctx, project).dataset_version_id
    mv = execute_run(ctx, request_run(ctx, dv, overrides=TINY_RECIPE).run_id)
    methods = ["entropy_mean", "entropy_top10", "tta_disagreement"]
    result = score_pool(ctx, mv, methods=methods)
    assert (result.scored, result.embedded) == (8, 14)  # 8 pool + 6 labelled images
    assert score_pool(ctx, mv, methods=methods).scored == 0
    with pytest.raises(Exception, match="dropout"):
        score_pool(ctx, mv, method="bald")
    picked = []
    for name in ("hybrid", "coreset", "class_balance"):
        rnd = select_round(ctx, project, budget=2, strategy=name, model_version_id=mv)
        assert len(rnd.items) == 2
        picked += [i for i, _, _ in rnd.items]
    assert len(set(picked)) == 6  # open rounds keep their images from later rounds
    # Without a strategy, the kind's default (power for segmentation) picks the round.
    rnd = select_round(ctx, project, budget=2, model_version_id=mv)
    assert rnd.strategy == default_strategy(ctx, project) == "power" and len(rnd.items) == 2


def test_random_below_draws_at_random_until_the_model_trained_on_enough(ctx, project):
    """A model trained on a handful of images ranks the pool little better than chance:
    with `random_below`, any strategy draws at random until the model that scores the
    pool trained on that many (its train split: labelled test images teach it nothing)."""
    from labelloop.db.models import AnnotationRound
    from labelloop.projects import get_project
    from labelloop.scoring.stage import pool_image_ids
    from labelloop.selection.rounds import trained_on

    with ctx.db.session() as s:
        pool = pool_image_ids(s, get_project(s, project).id)
    drawn = get_strategy("random").rank(Candidates(ids=pool), 3, 5, {})
    # No model yet (trained on none): uncertainty, which needs one, draws at random.
    rnd = select_round(ctx, project, budget=3, strategy="uncertainty", seed=5,
                       params={"random_below": 1})  # fmt: skip
    assert rnd.strategy == "random" and [i for i, _, _ in rnd.items] == drawn
    with ctx.db.session() as s:  # the round says why it was drawn at random
        stored = s.get(AnnotationRound, rnd.round_id).params
    assert (stored["random_below"], stored["switched_from"]) == (1, "uncertainty")
    dv = freeze(ctx, project).dataset_version_id
    mv = execute_run(ctx, request_run(ctx, dv, overrides=TINY_RECIPE).run_id)
    score_pool(ctx, mv)
    with ctx.db.session() as s:
        n = trained_on(s, mv)
    assert 0 < n < 6  # of the 6 labelled images, those of the train split
    above = select_round(ctx, project, budget=2, strategy="uncertainty", model_version_id=mv,
                         params={"random_below": n + 1})  # fmt: skip
    assert above.strategy == "random"
    enough = select_round(ctx, project, budget=2, strategy="uncertainty", model_version_id=mv,
                          params={"random_below": n})  # fmt: skip
    assert enough.strategy == "uncertainty"
    for bad in ("x", -1, 2.5, True):
        with pytest.raises(InputError, match="random_below must be"):
            select_round(ctx, project, budget=3, strategy="coreset", params={"random_below": bad})
