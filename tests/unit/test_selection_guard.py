"""The guard: a random control slice per round, the evidence it gives once labelled, and
the switch to random selection when the strategy's picks teach the model nothing new."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from labelloop.datasets.freeze import freeze
from labelloop.db.models import AnnotationRound, Image
from labelloop.domain import Box
from labelloop.errors import InputError
from labelloop.ingest.core import ingest_records
from labelloop.ingest.records import RecordAnnotation, SourceRecord
from labelloop.projects import get_project
from labelloop.scoring.stage import score_pool
from labelloop.selection import guard, select_round
from labelloop.selection.guard import RoundEvidence, control_size, decide, draw_control
from tests.factories import trained_project


def test_control_size_and_draw():
    assert [control_size(b, 0.1) for b in (1, 2, 10, 25)] == [0, 1, 1, 2]
    assert control_size(10, 0.0) == 0 and control_size(4, 0.9) == 3
    with pytest.raises(InputError, match="control fraction"):
        control_size(10, 1.0)
    drawn = draw_control(list(range(20)), {1, 2, 3}, 5, seed=4)
    assert len(set(drawn)) == 5 and not set(drawn) & {1, 2, 3}
    assert drawn == draw_control(list(range(20)), {1, 2, 3}, 5, seed=4)


def test_decide_needs_rounds_and_a_margin():
    assert decide([-0.2])[0] == "undecided"
    assert decide([-0.20, -0.25, -0.15])[0] == "switch"  # picks easier than random
    assert decide([0.20, 0.10, 0.15])[0] == "keep"
    assert decide([0.3, -0.3, 0.05])[0] == "undecided"  # within the noise


def _label(ctx, project: str, image_ids: list[int]) -> None:
    """The oracle: annotations for pool images (same pixels, so the same image rows)."""
    with ctx.db.session() as s:
        q = select(Image.id, Image.blob_key).where(Image.id.in_(image_ids))
        keys = {i: k for i, k in s.execute(q).all()}
    records = []
    for i in image_ids:
        data = ctx.blobs.get_bytes(keys[i])
        shapes = [Box(label="RBC", x=8, y=8, w=20, h=20), Box(label="WBC", x=30, y=20, w=20, h=20)]
        records.append(
            SourceRecord(
                source="oracle",
                external_id=f"img-{i}",
                uri=f"img-{i}.png",
                file="oracle",
                load=lambda d=data: d,
                annotations=[RecordAnnotation(external_id=f"img-{i}", shapes=shapes)],
            )
        )
    with ctx.db.session() as s:
        ingest_records(s, ctx.blobs, get_project(s, project), records)


def test_a_round_holds_a_control_slice_and_the_next_round_weighs_it(ctx, tmp_path):
    _, mv = trained_project(ctx, "grd", tmp_path, labelled=6, pool=10)
    score_pool(ctx, mv)
    first = select_round(ctx, "grd", budget=4, strategy="uncertainty", control_fraction=0.25)
    assert len(first.items) == 4 and len(first.control) == 1
    assert first.control[0] == first.items[-1][0]  # ranked after the strategy's picks
    assert first.guard["decision"] == "undecided" and first.guard["rounds"] == []
    with ctx.db.session() as s:
        params = s.get(AnnotationRound, first.round_id).params
    assert params["control"] == first.control and params["control_fraction"] == 0.25
    again = select_round(ctx, "grd", budget=4, strategy="uncertainty", control_fraction=0.25)
    assert (again.round_id, again.created, again.control) == (first.round_id, False, first.control)

    _label(ctx, "grd", [i for i, _, _ in first.items])
    freeze(ctx, "grd")
    second = select_round(ctx, "grd", budget=2, strategy="uncertainty", control_fraction=0.5)
    (ev,) = second.guard["rounds"]
    assert ev["round_id"] == first.round_id and second.guard["metric"] == "mean_dice"
    assert 0 <= ev["selected"] <= 1 and 0 <= ev["control"] <= 1
    assert ev["gain"] == pytest.approx(ev["control"] - ev["selected"])
    assert second.guard["decision"] == "undecided" and second.strategy == "uncertainty"


def test_the_guard_switches_to_random_on_evidence(ctx, tmp_path, monkeypatch):
    _, mv = trained_project(ctx, "sw", tmp_path, labelled=6, pool=12)
    score_pool(ctx, mv)
    rounds = []
    for k in range(2):
        r = select_round(ctx, "sw", budget=3, strategy="uncertainty", control_fraction=0.34, seed=k)
        _label(ctx, "sw", [i for i, _, _ in r.items])
        rounds.append(r)

    # Evidence as measured: the strategy's picks scored higher than the control images.
    def easier(ctx_, rnd, items):
        return RoundEvidence(rnd.id, rnd.number, rnd.strategy, 0.9, 0.6 + 0.01 * rnd.number, -0.3)

    monkeypatch.setattr(guard, "round_evidence", easier)
    third = select_round(ctx, "sw", budget=3, strategy="uncertainty", control_fraction=0.34)
    assert third.guard["decision"] == "switch" and third.strategy == "random"
    assert "switching to random" in third.guard["reason"] and third.control == []
    with ctx.db.session() as s:
        params = s.get(AnnotationRound, third.round_id).params
    assert params["switched_from"] == "uncertainty" and params["strategy"] == "random"
