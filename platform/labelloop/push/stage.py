"""Push a round back to annotators, with the model's predictions as pre-annotations.

Every push is a row with its id map (our image id <-> the target's task id), so labels
that come back merge onto the right images. Predictions carry `model_version` and a
`score`; Label Studio sorts by prediction score, and annotators should meet the least
confident images first, so the pushed score is the model's confidence (1 - normalised
uncertainty) and the raw uncertainty travels as the task field `uncertainty`.
"""

from __future__ import annotations

import csv
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
from labelloop.domain import shapes_from_json
from labelloop.errors import ConfigError, NotFoundError
from labelloop.labelstudio.convert import parse_label_config, shapes_to_results
from labelloop.labelstudio.label_config import CONTROL_KINDS, task_label_config


@dataclass
class TaskSpec:
    image_id: int
    sha256: str
    blob_key: str
    width: int
    height: int
    rank: int
    uncertainty: float | None
    counts: dict[str, int]
    result: list[dict]
    batch: int = 1
    shapes: list = field(default_factory=list)  # the prediction, canonical


@dataclass
class PushResult:
    push_id: int
    target: str
    destination: str
    round_number: int
    model_version: str | None
    id_map: dict[int, str] = field(default_factory=dict)
    views: list[int] = field(default_factory=list)  # Label Studio Data Manager tabs


def controls_for(config_xml: str) -> tuple[dict[str, str], str]:
    """Map canonical shape kinds to the config's control names, and the image name."""
    cfg = parse_label_config(config_xml)
    controls: dict[str, str] = {}
    for c in cfg.controls:
        kind = CONTROL_KINDS.get(c.type.lower())
        if kind and kind not in controls:
            controls[kind] = c.name
    return controls, cfg.to_name_default


@dataclass
class RoundBatch:
    """A round as a push sees it: the labeling config and one spec per image, in rank order."""

    number: int
    project: str
    model_version: str | None
    labels: list[str]
    config: str
    specs: list[TaskSpec]


def _round_batch(ctx: Context, round_id: int) -> RoundBatch:
    with ctx.db.session() as s:
        rnd = s.get(AnnotationRound, round_id)
        if rnd is None:
            raise NotFoundError(f"no annotation round with id {round_id}")
        project = s.get(Project, rnd.project_id)
        labels = [lc.name for lc in project.labels]
        mv = s.get(ModelVersion, rnd.model_version_id) if rnd.model_version_id else None
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
        number, pname, mv_name = rnd.number, project.name, mv.name if mv else None
        config = task_label_config(labels, project.task)
    controls, to_name = controls_for(config)
    specs = []
    for item, img in rows:
        sc = scores.get(img.id)
        result, counts, shapes = [], {}, []
        if sc is not None and "shapes_key" in sc.details:
            shapes = shapes_from_json(json.loads(ctx.blobs.get_bytes(sc.details["shapes_key"])))
            result = shapes_to_results(
                shapes, img.width, img.height, controls=controls, to_name=to_name
            )
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
                result,
                item.batch,
                shapes,
            )
        )
    return RoundBatch(number, pname, mv_name, labels, config, specs)


def _confidence(uncertainty: float | None) -> float | None:
    return None if uncertainty is None else round(max(0.0, min(1.0, 1.0 - uncertainty)), 6)


def _record(
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


def push_to_file(ctx: Context, round_id: int, out_dir: str | Path | None = None) -> PushResult:
    """A self-contained folder: Label Studio import JSON with predictions, the images, the
    labeling config, a CSV of (image, score, rank, predicted counts) and the CVAT 1.1 file."""
    batch = _round_batch(ctx, round_id)
    folder, id_map = write_round_folder(ctx, batch, out_dir)
    push_id = _record(ctx, round_id, "file", str(folder), id_map)
    return PushResult(push_id, "file", str(folder), batch.number, batch.model_version, id_map)


def round_batch(ctx: Context, round_id: int) -> RoundBatch:
    return _round_batch(ctx, round_id)


def record_push(
    ctx: Context, round_id: int, target: str, destination: str, id_map: dict[int, str]
) -> int:
    return _record(ctx, round_id, target, destination, id_map)


def write_round_folder(
    ctx: Context, batch: RoundBatch, out_dir: str | Path | None = None
) -> tuple[Path, dict[int, str]]:
    """Write the round's folder; returns it and the image id -> `images/<file>` map."""
    number, labels, mv_name, specs = batch.number, batch.labels, batch.model_version, batch.specs
    out = Path(out_dir) if out_dir else ctx.settings.data_dir / "exports" / batch.project
    folder = out / f"round-{number:03d}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    tasks, id_map = [], {}
    for spec in specs:
        name = f"{spec.sha256[:16]}.{spec.blob_key.rsplit('.', 1)[-1]}"
        (folder / "images" / name).write_bytes(ctx.blobs.get_bytes(spec.blob_key))
        task = {
            "data": {"image": f"/data/local-files/?d=images/{name}", **_task_fields(spec, number)}
        }
        if spec.result:
            task["predictions"] = [
                {
                    "model_version": mv_name,
                    "score": _confidence(spec.uncertainty),
                    "result": spec.result,
                }
            ]
        tasks.append(task)
        id_map[spec.image_id] = f"images/{name}"
    tmp = folder / "tasks.json.tmp"
    tmp.write_text(json.dumps(tasks, indent=1))
    tmp.replace(folder / "tasks.json")
    (folder / "label_config.xml").write_text(batch.config)
    _write_cvat(folder, batch, {s.image_id: id_map[s.image_id].split("/", 1)[1] for s in specs})
    with open(folder / "tasks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "image_id", "rank", "uncertainty", *[f"count_{lb}" for lb in labels]])
        for spec in specs:
            w.writerow(
                [
                    id_map[spec.image_id],
                    spec.image_id,
                    spec.rank,
                    spec.uncertainty,
                    *[spec.counts.get(lb, "") for lb in labels],
                ]
            )
    return folder, id_map


def _write_cvat(folder: Path, batch: RoundBatch, names: dict[int, str]) -> None:
    """`cvat/annotations.xml` ('CVAT for images 1.1', the predictions) and `cvat/images.txt`
    (the images in rank order): create a CVAT task from `images/` (sorted by the list),
    then upload the XML as CVAT 1.1."""
    from labelloop.cvat.writer import CvatImage, cvat_xml

    cvat = folder / "cvat"
    cvat.mkdir(exist_ok=True)
    images = [
        CvatImage(names[sp.image_id], sp.width, sp.height, list(sp.shapes)) for sp in batch.specs
    ]
    title = f"labelloop {batch.project} round {batch.number}"
    tmp = cvat / "annotations.xml.tmp"
    tmp.write_text(cvat_xml(images, batch.labels, title), encoding="utf-8")
    tmp.replace(cvat / "annotations.xml")
    (cvat / "images.txt").write_text("".join(f"{im.name}\n" for im in images))


def push_to_labelstudio(
    ctx: Context,
    round_id: int,
    *,
    url: str | None = None,
    token: str | None = None,
    title: str | None = None,
) -> PushResult:
    """Create (or reuse) tasks in a Label Studio project and attach the predictions."""
    from labelloop.labelstudio.client import LabelStudioSink, PushTask

    url = url or ctx.settings.labelstudio_url
    token = token or ctx.settings.labelstudio_token.get_secret_value()
    if not url or not token:
        raise ConfigError(
            "Label Studio push needs LABELLOOP_LABELSTUDIO_URL and "
            "LABELLOOP_LABELSTUDIO_TOKEN (the URL may also come from --ls-url)"
        )
    batch = _round_batch(ctx, round_id)
    number, mv_name, specs = batch.number, batch.model_version, batch.specs
    sink = LabelStudioSink(url, token)
    ls_project = sink.ensure_project(title or f"labelloop {batch.project}", batch.config)
    push_tasks = []
    for spec in specs:
        prediction = None
        if spec.result:
            prediction = {
                "result": spec.result,
                "score": _confidence(spec.uncertainty),
                "model_version": mv_name,
            }
        push_tasks.append(
            PushTask(
                key=spec.sha256,
                filename=f"{spec.sha256[:16]}.{spec.blob_key.rsplit('.', 1)[-1]}",
                image_bytes=ctx.blobs.get_bytes(spec.blob_key),
                data_extra=_task_fields(spec, number),
                prediction=prediction,
            )
        )
    key_to_task = sink.push(ls_project, push_tasks)
    id_map = {spec.image_id: str(key_to_task[spec.sha256]) for spec in specs}
    # Annotators open the round's tab and meet the least confident image first; with
    # several annotator batches, each gets a tab of its own.
    views = [
        sink.ensure_view(
            ls_project, f"labelloop round {number}", {"labelloop_round": number}, "uncertainty"
        )
    ]
    batches = sorted({spec.batch for spec in specs})
    if len(batches) > 1:
        views += [
            sink.ensure_view(
                ls_project,
                f"labelloop round {number} · batch {b}",
                {"labelloop_round": number, "labelloop_batch": b},
                "uncertainty",
            )
            for b in batches
        ]
    destination = f"{url.rstrip('/')}/projects/{ls_project}"
    push_id = _record(ctx, round_id, "labelstudio", destination, id_map)
    return PushResult(push_id, "labelstudio", destination, number, mv_name, id_map, views)


def _task_fields(spec: TaskSpec, number: int) -> dict:
    """Task data fields every push sets: our ids, and what annotators sort and filter by."""
    return {
        "labelloop_image_id": spec.image_id,
        "labelloop_round": number,
        "labelloop_batch": spec.batch,
        "uncertainty": spec.uncertainty,
        "rank": spec.rank,
    }


def push_round(ctx: Context, round_id: int, target: str = "file", **kwargs) -> PushResult:
    if target == "file":
        return push_to_file(ctx, round_id, kwargs.get("out_dir"))
    if target == "cvat":
        from labelloop.cvat.push import push_to_cvat

        return push_to_cvat(ctx, round_id, out_dir=kwargs.get("out_dir"), url=kwargs.get("url"))
    if target == "labelstudio":
        return push_to_labelstudio(
            ctx,
            round_id,
            url=kwargs.get("url"),
            token=kwargs.get("token"),
            title=kwargs.get("title"),
        )
    raise ConfigError(f"unknown push target {target!r}; choose one of: file, labelstudio, cvat")
