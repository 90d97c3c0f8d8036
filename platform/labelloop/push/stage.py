"""The push stage: a round goes to a target (`labelloop.push.targets`), with the model's
predictions as pre-annotations.

A target is a function `(ctx, round_id, PushOptions) -> PushResult` living with its tool;
it reads the round with `round_batch` (images in rank order, each with the prediction in
canonical shapes) and records what it pushed with `record_push`. Every push is a row with
its id map (our image id <-> the target's task id), so labels that come back merge onto
the right images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from labelloop.context import Context
from labelloop.db.models import (
    AnnotationRound,
    Image,
    ModelVersion,
    Project,
    Push,
    PushItem,
    RoundItem,
    Score,
)
from labelloop.domain import Shape, shapes_from_json
from labelloop.errors import NotFoundError
from labelloop.projects import draw_kind
from labelloop.push.targets import get_target


@dataclass
class TaskSpec:
    """One image of a round as a push sees it."""

    image_id: int
    sha256: str
    blob_key: str
    width: int
    height: int
    rank: int
    uncertainty: float | None
    counts: dict[str, int]
    batch: int = 1
    shapes: list[Shape] = field(default_factory=list)  # the prediction, canonical
    # The predicting model's uncertainty for this image when it is not the model that
    # selected the round (a refresh with a newly promoted model); else `uncertainty`.
    prediction_uncertainty: float | None = None

    @property
    def file_name(self) -> str:
        """The image's file name wherever a push writes or uploads it."""
        return f"{self.sha256[:16]}.{self.blob_key.rsplit('.', 1)[-1]}"


@dataclass
class RoundBatch:
    """A round as a push sees it: the project's task kind and labels, one spec per image
    in rank order."""

    number: int
    project: str
    task: str
    model_version: str | None
    labels: list[str]
    specs: list[TaskSpec]
    draw: str | None = None  # the shape kind annotators draw (labelloop.projects.draw_kind)


@dataclass(frozen=True)
class PushOptions:
    """What a user can tell a push; each target uses the fields that apply to it."""

    out_dir: str | Path | None = None  # where the round folder goes (default: data dir)
    url: str | None = None  # the tool's server (default: its LABELLOOP_*_URL)
    token: str | None = None  # Label Studio token (default: LABELLOOP_LABELSTUDIO_TOKEN)
    title: str | None = None  # Label Studio project title


@dataclass
class PushResult:
    push_id: int
    target: str
    destination: str
    round_number: int
    model_version: str | None
    id_map: dict[int, str] = field(default_factory=dict)
    views: list[int] = field(default_factory=list)  # Label Studio Data Manager tabs


def push_round(
    ctx: Context,
    round_id: int,
    target: str = "file",
    *,
    out_dir: str | Path | None = None,
    url: str | None = None,
    token: str | None = None,
    title: str | None = None,
) -> PushResult:
    """Send round `round_id` to `target`; ConfigError lists the targets for an unknown one."""
    push = get_target(target).load()
    return push(ctx, round_id, PushOptions(out_dir=out_dir, url=url, token=token, title=title))


def round_batch(ctx: Context, round_id: int, model_version_id: int | None = None) -> RoundBatch:
    """The round as a push sees it, with the predictions of the model that selected it,
    or of `model_version_id` (refreshing an open round with a newly promoted model)."""
    with ctx.db.session() as s:
        rnd = s.get(AnnotationRound, round_id)
        if rnd is None:
            raise NotFoundError(f"no annotation round with id {round_id}")
        project = s.get(Project, rnd.project_id)
        labels = [lc.name for lc in project.labels]
        predicting = model_version_id or rnd.model_version_id
        mv = s.get(ModelVersion, predicting) if predicting else None
        method = (rnd.params or {}).get("method")
        rows = s.execute(
            select(RoundItem, Image)
            .join(Image, Image.id == RoundItem.image_id)
            .where(RoundItem.round_id == round_id)
            .order_by(RoundItem.rank)
        ).all()
        scores = {}
        if mv is not None:
            q = select(Score).where(
                Score.model_version_id == mv.id, Score.image_id.in_([img.id for _, img in rows])
            )
            if method:
                q = q.where(Score.method == method)
            scores = {sc.image_id: sc for sc in s.scalars(q)}
        number, pname, task, mv_name = (
            rnd.number,
            project.name,
            project.task,
            mv.name if mv else None,
        )
        draw = draw_kind(project)
    specs = []
    for item, img in rows:
        sc = scores.get(img.id)
        counts, shapes = {}, []
        if sc is not None and "shapes_key" in sc.details:
            shapes = shapes_from_json(json.loads(ctx.blobs.get_bytes(sc.details["shapes_key"])))
            counts = sc.details.get("counts", {})
        specs.append(
            TaskSpec(
                img.id,
                img.sha256,
                img.blob_key,
                img.width,
                img.height,
                item.rank,
                item.score,
                counts,
                item.batch,
                shapes,
                sc.value if sc is not None and model_version_id is not None else None,
            )
        )
    return RoundBatch(number, pname, task, mv_name, labels, specs, draw)


def record_push(
    ctx: Context, round_id: int, target: str, destination: str, id_map: dict[int, str]
) -> int:
    with ctx.db.session() as s:
        push = Push(round_id=round_id, target=target, destination=destination)
        s.add(push)
        s.flush()
        s.add_all(
            PushItem(push_id=push.id, image_id=i, external_task_id=str(t))
            for i, t in id_map.items()
        )
        return push.id
