"""The guard: a random control slice in every round, and the evidence it gives.

Active learning can do harm: on a homogeneous pool, or with scores that rank the wrong
images, a strategy sends annotators images that teach less than random ones would. So a
round may hold back a small random fraction of its budget (`control_fraction`): those
images are drawn uniformly from the same eligible pool and labelled like the rest. Once a
round is labelled, the model that chose it is evaluated (the kind's primary metric) on the
selected images and on the control images: the selected ones are supposed to be where the
model is wrong, so `gain` = metric on control - metric on selected should be positive. If,
over the last rounds, the selected images were *easier* for the model than random ones by
more than a standard error, the policy is picking what the model already knows: the guard
switches the project's next rounds to random selection, and says so in the round.

What this measures is informativeness (does the score find the model's errors?), not the
learning gain itself, which only separate trainings on each slice could attribute; the
label-efficiency benchmark measures that, and chooses the default strategy.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.context import Context
from labelloop.datasets.freeze import load_manifest
from labelloop.db.models import AnnotationRound, DatasetVersion, RoundItem
from labelloop.errors import InputError
from labelloop.registry import load_model_version

FALLBACK = "random"
WINDOW = 5  # rounds of evidence the decision looks at
MIN_ROUNDS = 2


def control_size(budget: int, fraction: float) -> int:
    """Images of a round's budget held back for the random control slice."""
    if not 0 <= fraction < 1:
        raise InputError(f"control fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or budget < 2:
        return 0
    return min(budget - 1, max(1, round(budget * fraction)))


def draw_control(pool: list[int], exclude: set[int], n: int, seed: int) -> list[int]:
    """A seeded uniform sample of the eligible pool, outside what the strategy chose."""
    rest = sorted(i for i in pool if i not in exclude)
    return random.Random(seed * 7919 + 17).sample(rest, min(n, len(rest)))


@dataclass
class RoundEvidence:
    round_id: int
    number: int
    strategy: str
    selected: float  # primary metric of the choosing model on the selected images
    control: float  # ... and on the control images
    gain: float  # control - selected: > 0 when the policy found the model's errors


@dataclass
class GuardReport:
    """What the guard decided before a round: reported with the round (`RoundResult`)."""

    metric: str | None
    rounds: list[RoundEvidence] = field(default_factory=list)
    gain_mean: float | None = None
    gain_se: float | None = None
    decision: str = "undecided"  # keep | switch | undecided
    policy: str = ""  # the strategy the round used
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    gains: list[float], min_rounds: int = MIN_ROUNDS
) -> tuple[str, float | None, float | None]:
    """keep / switch / undecided from the per-round gains (most recent last)."""
    if len(gains) < min_rounds:
        return "undecided", (sum(gains) / len(gains) if gains else None), None
    n = len(gains)
    mean = sum(gains) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1))
    se = sd / math.sqrt(n)
    if mean < -se:
        return "switch", mean, se
    return ("keep" if mean > se else "undecided"), mean, se


def _labelled_rounds(s: Session, project_id: int, labelled: set[int]) -> list[AnnotationRound]:
    rounds = s.scalars(
        select(AnnotationRound)
        .where(AnnotationRound.project_id == project_id)
        .order_by(AnnotationRound.number.desc())
    ).all()
    out = []
    for rnd in rounds:
        control = (rnd.params or {}).get("control") or []
        if not control or rnd.model_version_id is None:
            continue
        ids = s.scalars(select(RoundItem.image_id).where(RoundItem.round_id == rnd.id)).all()
        if ids and all(i in labelled for i in ids):
            out.append(rnd)
        if len(out) == WINDOW:
            break
    return out[::-1]


def round_evidence(ctx: Context, rnd: AnnotationRound, items: list[int]) -> RoundEvidence | None:
    """The choosing model's primary metric on the round's selected and control images,
    read from the project's newest dataset version (which holds their labels)."""
    control = set(rnd.params["control"])
    selected = [i for i in items if i not in control]
    with ctx.db.session() as s:
        dv_id = s.scalar(
            select(DatasetVersion.id)
            .where(DatasetVersion.project_id == rnd.project_id)
            .order_by(DatasetVersion.id.desc())
            .limit(1)
        )
    if dv_id is None:
        return None
    manifest = load_manifest(ctx, dv_id)
    loaded = load_model_version(ctx, rnd.model_version_id)
    metric = loaded.kind.primary_metric

    def score(ids: set[int]) -> float | None:
        part = [{**it, "split": "guard"} for it in manifest["items"] if it["image_id"] in ids]
        if not part:
            return None
        result = loaded.kind.evaluate(
            loaded.model,
            {**manifest, "items": part},
            ctx.blobs.get_bytes,
            split="guard",
            labels=loaded.labels,
            recipe=loaded.recipe,
        )
        value = result.get(metric)
        return None if value is None else float(value)

    sel, ctl = score(set(selected)), score(control)
    if sel is None or ctl is None:
        return None
    return RoundEvidence(rnd.id, rnd.number, rnd.strategy, sel, ctl, ctl - sel)


def guard_report(
    ctx: Context, s: Session, project_id: int, labelled: set[int], strategy: str
) -> GuardReport:
    """The evidence of the project's labelled rounds with control slices, and the policy
    the next round should use."""
    report = GuardReport(metric=None, policy=strategy)
    for rnd in _labelled_rounds(s, project_id, labelled):
        items = s.scalars(select(RoundItem.image_id).where(RoundItem.round_id == rnd.id)).all()
        ev = round_evidence(ctx, rnd, list(items))
        if ev is not None:
            report.rounds.append(ev)
            report.metric = (
                report.metric or load_model_version(ctx, rnd.model_version_id).kind.primary_metric
            )
    # Only rounds chosen by the policy under judgement speak for it.
    gains = [ev.gain for ev in report.rounds if ev.strategy == strategy]
    report.decision, report.gain_mean, report.gain_se = decide(gains)
    if report.decision == "switch" and strategy != FALLBACK:
        report.policy = FALLBACK
        report.reason = (
            f"over {len(gains)} rounds the images {strategy!r} chose scored "
            f"{-report.gain_mean:.3f} higher {report.metric} than random control images "
            f"(se {report.gain_se:.3f}): the model already knew them; switching to {FALLBACK}"
        )
    elif report.decision == "keep":
        report.reason = f"{strategy!r} finds the model's errors better than random control"
    else:
        report.reason = f"not enough evidence yet ({len(gains)} rounds with a control slice)"
    return report
