"""One simulated run: the real stages (ingest, freeze, train, score, select) on a private
embedded database, with an oracle that reveals a selected image's labels by ingesting them.

Every run of a simulation (strategy x seed) gets its own SQLite file and blob folder, so
runs may go in parallel processes. The test images are ingested with their labels and
pinned to the test split; pool images enter unlabelled, which makes them the pool that
scoring and selection see, exactly as in a project.

Every strategy of a seed starts from the same random seed set, trained the same way
(training is deterministic), so the first run of a seed keeps its state after that first
training (database and blobs, `seed_set`) and the seed's other strategies start from a
copy of it instead of training it again: one training fewer per strategy and seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.datasets.freeze import freeze
from labelloop.db import migrate
from labelloop.db.models import ModelVersion, SourceItem
from labelloop.ingest.core import ingest_records
from labelloop.ingest.records import SourceRecord
from labelloop.projects import create_project, get_project
from labelloop.runs import execute_run, request_run
from labelloop.scoring.stage import score_pool
from labelloop.selection import get_strategy, select_round
from labelloop.simulate.oracle import SimulationData
from labelloop.simulate.spec import SimulationSpec
from labelloop.training.recipe import recipe_class

FULL = "full"  # the reference run: the whole pool labelled at once
_DB = "labelloop.db"  # the embedded database's file in a run's folder
_STATE = "first_step.json"  # what a kept seed set holds besides the run's folder


def metric_value(metrics: dict[str, Any], dotted: str) -> float | None:
    cur: Any = metrics
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, int | float) else None


def _settings(workdir: Path, seed: int) -> Settings:
    # Every labelled pool image trains (no val split: the last epoch's model is measured).
    return Settings.embedded_at(workdir, split_fractions=(1.0, 0.0, 0.0), split_seed=seed)


def _ingest(ctx: Context, project: str, records: list[SourceRecord], label_map) -> None:
    with ctx.db.session() as s:
        ingest_records(
            s,
            ctx.blobs,
            get_project(s, project),
            records,
            label_map=label_map,
            max_pixels=ctx.settings.max_image_pixels,
        )


def _overrides(spec: SimulationSpec, seed: int, labelled: int) -> dict[str, Any]:
    out = {**spec.recipe, "seed": seed}
    fields = recipe_class(spec.task.value).model_fields
    if spec.samples_per_epoch and "repeats" in fields:
        out["repeats"] = max(1, math.ceil(spec.samples_per_epoch / labelled))
    return out


def run_one(
    spec: SimulationSpec,
    data: SimulationData,
    strategy: str,
    seed: int,
    workdir: Path,
    label_map: dict[str, str] | None = None,
    on_step: Callable[[dict], None] | None = None,
    seed_set: Path | None = None,
) -> dict[str, Any]:
    """Train at each size of `spec.sizes` (or once on the whole pool for FULL), choosing the
    next images with `strategy`; returns {"strategy", "seed", "points": [...]}.

    `seed_set`: a folder for this seed's first step. Where another strategy left it, the
    run starts from a copy (its first point then says `"shared": true`); otherwise the run
    leaves its own there after the first training."""
    if workdir.exists():
        shutil.rmtree(workdir)
    kept = None
    if seed_set is not None and strategy != FULL and (seed_set / _STATE).exists():
        kept = json.loads((seed_set / _STATE).read_text())
        shutil.copytree(seed_set / "run", workdir)
    settings = _settings(workdir, seed)
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    keep = None if kept is not None or strategy == FULL else seed_set
    try:
        return _run(ctx, spec, data, strategy, seed, label_map or {}, on_step, kept, keep)
    finally:
        set_context(None)
        ctx.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _keep_first_step(ctx: Context, seed_set: Path, state: dict[str, Any]) -> None:
    """Copy this run's folder (the database through SQLite's backup, which includes what
    is still in its write-ahead log) to `seed_set`, all or nothing: a parallel run of the
    same seed that got there first wins."""
    src = ctx.settings.data_dir
    tmp = seed_set.with_name(f"{seed_set.name}.{random.getrandbits(32):08x}.tmp")
    db_files = {_DB, f"{_DB}-wal", f"{_DB}-shm"}
    shutil.copytree(src, tmp / "run", ignore=lambda d, names: db_files & set(names))
    with sqlite3.connect(src / _DB) as a, sqlite3.connect(tmp / "run" / _DB) as b:
        a.backup(b)
    (tmp / _STATE).write_text(json.dumps(state))
    try:
        tmp.rename(seed_set)
    except OSError:  # kept already
        shutil.rmtree(tmp, ignore_errors=True)


def _run(
    ctx, spec, data, strategy, seed, label_map, on_step, kept=None, keep=None
) -> dict[str, Any]:
    name = "simulation"  # a private database per run: the display name stays in the spec
    if kept is None:
        with ctx.db.session() as s:
            create_project(s, name, spec.task.value, spec.labels)
        test = [dataclasses.replace(r, meta={**r.meta, "split": "test"}) for r in data.test]
        hidden = [dataclasses.replace(r, annotations=[]) for r in data.pool]
        _ingest(ctx, name, test + hidden, label_map)
    by_id = {r.external_id: r for r in data.pool}
    with ctx.db.session() as s:
        image_of = dict(
            s.execute(
                select(SourceItem.external_id, SourceItem.image_id).where(
                    SourceItem.external_id.in_(list(by_id))
                )
            ).all()
        )
    record_of = {image_of[k]: by_id[k] for k in by_id}
    steps = [s for s in spec.sizes if s < len(data.pool)]
    sizes = [len(data.pool)] if strategy == FULL else steps
    epochs = spec.reference_epochs(len(steps)) if strategy == FULL else None
    order = sorted(by_id)
    labelled = set(random.Random(seed).sample(order, sizes[0]))
    if kept is None:
        _ingest(ctx, name, [by_id[k] for k in sorted(labelled)], label_map)
    points = []
    previous: str | None = None  # the last step's model artifact (warm starts)
    for step in range(len(sizes)):
        started = time.monotonic()
        if step == 0 and kept is not None:
            mv_id, previous = kept["model_version_id"], kept["artifact"]
            point: dict[str, Any] = {**kept["point"], "shared": True}
        else:
            mv_id, previous, point = _train_step(
                ctx, spec, name, seed, len(labelled), previous, epochs
            )
            if step == 0 and keep is not None and len(sizes) > 1:
                state = {"model_version_id": mv_id, "artifact": previous, "point": point}
                _keep_first_step(ctx, keep, state)
        last = step == len(sizes) - 1
        if not last:
            k = sizes[step + 1] - len(labelled)
            t0 = time.monotonic()
            strat = get_strategy(strategy)
            method = spec.methods.get(strategy)
            diverse = strat.needs_embeddings
            if strat.needs_scores or diverse:
                score_pool(ctx, mv_id, methods=[method] if method else None, embed=diverse)
            rnd = select_round(
                ctx,
                name,
                budget=k,
                strategy=strategy,
                model_version_id=mv_id,
                method=method,
                seed=seed * 1000 + step,
                params=spec.params.get(strategy),
                control_fraction=spec.control_fraction,
            )
            chosen = [record_of[i] for i, _, _ in rnd.items]
            _ingest(ctx, name, chosen, label_map)  # the oracle answers
            labelled |= {r.external_id for r in chosen}
            point["select_seconds"] = round(time.monotonic() - t0, 2)
            point["selected"] = [r.external_id for r in chosen]
            if rnd.guard is not None:
                point["guard"] = {
                    "decision": rnd.guard["decision"],
                    "policy": rnd.strategy,
                    "gain_mean": rnd.guard["gain_mean"],
                    "control": len(rnd.control),
                }
        point["step_seconds"] = round(time.monotonic() - started, 2)
        points.append(point)
        if on_step:
            on_step({"strategy": strategy, "seed": seed, **point})
    return {"strategy": strategy, "seed": seed, "points": points}


def _train_step(
    ctx: Context,
    spec: SimulationSpec,
    name: str,
    seed: int,
    labelled: int,
    previous: str | None,
    epochs: int | None = None,
) -> tuple[int, str, dict[str, Any]]:
    """Freeze what is labelled, train on it (warm from `previous` where the spec says so,
    for `epochs` where given) and measure on the test split: (model version id, its
    artifact, the curve's point)."""
    dv = freeze(ctx, name).dataset_version_id
    overrides = _overrides(spec, seed, labelled)
    if epochs is not None:
        overrides["epochs"] = epochs
    if spec.warm_start and previous is not None:
        overrides["init_from"] = previous
        if spec.warm_epochs:
            overrides["epochs"] = spec.warm_epochs
    run = request_run(ctx, dv, overrides=overrides)
    mv_id = execute_run(ctx, run.run_id)
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, mv_id)
        metrics, artifact = mv.metrics, mv.artifact_key
    point: dict[str, Any] = {
        "labelled": labelled,
        "metric": metric_value(metrics["test"], spec.metric),
        **{m: metric_value(metrics["test"], m) for m in spec.extra_metrics},
        "train_seconds": metrics.get("train_seconds"),
        "epochs": metrics.get("epochs"),
        "warm": "init_from" in overrides,
    }
    return mv_id, artifact, point
