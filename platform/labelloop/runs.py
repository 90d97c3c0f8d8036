"""Training runs: (dataset version, recipe hash) -> exactly one model version.

A run row is created once per key; executing it again after success returns the same
model version, and executing it after a crash resumes from the run's last checkpoint
(the trainer finds `last.ckpt` in the run's work folder)."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from labelloop.context import Context
from labelloop.datasets.freeze import load_manifest
from labelloop.db.models import (
    DatasetVersion,
    ModelVersion,
    Project,
    Promotion,
    TrainingRun,
    utcnow,
)
from labelloop.domain import RunStatus
from labelloop.errors import Cancelled, ConfigError, Interrupted, NotFoundError
from labelloop.training.recipe import BaseRecipe, parse_recipe

_log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    run_id: int
    created: bool
    status: str
    model_version_id: int | None


def default_recipe(task: str) -> BaseRecipe:
    """The kind's default recipe for a project's task (ConfigError for an unknown task,
    see `labelloop.kinds`)."""
    return parse_recipe({}, task)


def request_run(
    ctx: Context,
    dataset_version_id: int,
    recipe: BaseRecipe | None = None,
    overrides: dict | None = None,
) -> RunRequest:
    """Get or create the run for this dataset version and recipe (idempotent)."""
    with ctx.db.session() as s:
        dv, recipe = _dataset_and_recipe(s, dataset_version_id, recipe, overrides)
        rh = recipe.recipe_hash()
        run = s.scalar(
            select(TrainingRun).where(
                TrainingRun.dataset_version_id == dv.id, TrainingRun.recipe_hash == rh
            )
        )
        created = run is None
        if run is None:
            run = TrainingRun(
                project_id=dv.project_id,
                dataset_version_id=dv.id,
                recipe=recipe.model_dump(mode="json"),
                recipe_hash=rh,
                status=RunStatus.queued.value,
            )
            s.add(run)
            s.flush()
        mv = s.scalar(select(ModelVersion.id).where(ModelVersion.training_run_id == run.id))
        return RunRequest(run.id, created, run.status, mv)


def _dataset_and_recipe(
    s, dataset_version_id: int, recipe: BaseRecipe | None, overrides: dict | None
) -> tuple[DatasetVersion, BaseRecipe]:
    dv = s.get(DatasetVersion, dataset_version_id)
    if dv is None:
        raise NotFoundError(f"no dataset version with id {dataset_version_id}")
    project = s.get(Project, dv.project_id)
    recipe = recipe or default_recipe(project.task)
    if recipe.task != project.task:
        raise ConfigError(
            f"recipe is for {recipe.task} but project {project.name!r} is a {project.task} project"
        )
    if overrides:
        recipe = recipe.with_overrides(overrides)
    return dv, recipe


def trained_version(
    ctx: Context,
    dataset_version_id: int,
    recipe: BaseRecipe | None = None,
    overrides: dict | None = None,
) -> int | None:
    """The model version already trained on this dataset version with this recipe, if any
    (what a pipeline checks before deciding there is nothing new to learn)."""
    with ctx.db.session() as s:
        dv, recipe = _dataset_and_recipe(s, dataset_version_id, recipe, overrides)
        return s.scalar(
            select(ModelVersion.id)
            .join(TrainingRun, ModelVersion.training_run_id == TrainingRun.id)
            .where(
                TrainingRun.dataset_version_id == dv.id,
                TrainingRun.recipe_hash == recipe.recipe_hash(),
            )
        )


class _ProgressWriter:
    """Writes progress to the run row, at most every `every_s` seconds (the DB, not the
    broker, is where an ML engineer or the API reads a run's state), and mirrors each
    epoch's checkpoint into the blob store, so a task redelivered to another host resumes
    from it. The previous checkpoint blob is deleted once the new one is recorded.

    Each write also reads the run's status: a run cancelled from the API or CLI raises
    Cancelled here, which stops the trainer after its current step (the checkpoint of
    the last finished epoch stays, so a later request resumes from it)."""

    def __init__(
        self,
        ctx: Context,
        run_id: int,
        every_s: float = 2.0,
        forward: Callable[[dict], None] | None = None,
    ):
        self.ctx, self.run_id, self.every_s, self.forward = ctx, run_id, every_s, forward
        self._last = 0.0
        self._curve: dict[int, float] = {}
        self._mirrored: tuple[int, int] | None = None  # (mtime_ns, size) of the last upload

    def __call__(self, progress: dict) -> None:
        progress = dict(progress)
        checkpoint = progress.pop("checkpoint", None)
        if checkpoint:  # first: a caller that cancels from `forward` keeps its resume point
            self._mirror(Path(checkpoint), int(progress.get("epoch") or 0))
        if self.forward:
            self.forward(progress)
        if progress.get("final") and isinstance(progress.get("loss"), int | float):
            self._curve[int(progress.get("epoch") or 0)] = round(float(progress["loss"]), 6)
        now = time.monotonic()
        if now - self._last < self.every_s and not progress.get("final"):
            return
        self._last = now
        with self.ctx.db.session() as s:
            run = s.get(TrainingRun, self.run_id)
            if run.status == RunStatus.cancelled:
                raise Cancelled(f"training run {self.run_id} was cancelled")
            # The loss per finished epoch, kept across a resume: the dashboard's curve.
            curve = {int(e): v for e, v in (run.progress or {}).get("curve", [])}
            curve.update(self._curve)
            run.progress = {k: v for k, v in progress.items() if isinstance(v, int | float | str)}
            if curve:
                run.progress["curve"] = [[e, curve[e]] for e in sorted(curve)]

    def _mirror(self, path: Path, epoch: int) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        if self._mirrored == (st.st_mtime_ns, st.st_size):
            return
        key, _ = self.ctx.blobs.put_file(path, prefix="checkpoints", suffix=".ckpt")
        self._mirrored = (st.st_mtime_ns, st.st_size)
        with self.ctx.db.session() as s:
            run = s.get(TrainingRun, self.run_id)
            old, run.checkpoint_key, run.checkpoint_epoch = run.checkpoint_key, key, epoch
        if old and old != key:
            self.ctx.blobs.delete(old)


def _restore_checkpoint(ctx: Context, run_id: int, workdir: Path) -> bool:
    """Put the run's mirrored checkpoint into `workdir` when this host has none (the task
    was redelivered elsewhere, or the local folder was lost)."""
    from labelloop.training.harness import LAST_CKPT

    target = workdir / LAST_CKPT
    with ctx.db.session() as s:
        key = s.get(TrainingRun, run_id).checkpoint_key
    if target.exists() or not key or not ctx.blobs.exists(key):
        return False
    workdir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(ctx.blobs.get_bytes(key))
    partial.replace(target)
    _log.info("run %s: restored checkpoint %s from the blob store", run_id, key)
    return True


def _mark(ctx: Context, run_id: int, **values) -> None:
    with ctx.db.session() as s:
        run = s.get(TrainingRun, run_id)
        for k, v in values.items():
            setattr(run, k, v)


def execute_run(
    ctx: Context,
    run_id: int,
    *,
    task_id: str | None = None,
    worker: str | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> int:
    """Train, evaluate on the frozen test split, store the artifact, record the version.

    Returns the model version id; a run that already produced one returns it unchanged."""
    from labelloop.registry import consider_promotion
    from labelloop.training.intervals import add_interval_coverage, calibrate_count_intervals
    from labelloop.training.kind import get_kind

    with ctx.db.session() as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            raise NotFoundError(f"no training run with id {run_id}")
        done = s.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run_id))
        if done is not None:
            decided = s.scalar(select(Promotion.id).where(Promotion.model_version_id == done.id))
            pending = done.stage == "candidate" and not decided and "comparison" not in done.metrics
            done_id = done.id
    if done is not None:
        if pending:  # the earlier attempt died between recording and promotion
            consider_promotion(ctx, done_id)
        return done_id
    with ctx.db.session() as s:
        run = s.get(TrainingRun, run_id)
        run.status = RunStatus.running.value
        run.attempts += 1
        run.task_id = task_id
        run.worker = worker
        run.started_at = run.started_at or utcnow()
        run.error = None
        recipe = parse_recipe(run.recipe)
        dv_id, project_id = run.dataset_version_id, run.project_id
    started = time.monotonic()
    try:
        kind = get_kind(recipe.task)
        manifest = load_manifest(ctx, dv_id)
        labels = manifest["labels"]
        workdir = ctx.workdir("runs", str(run_id))
        _restore_checkpoint(ctx, run_id, workdir)
        outcome = kind.train(
            manifest,
            recipe,
            ctx.blobs.get_bytes,
            workdir,
            on_progress=_ProgressWriter(ctx, run_id, forward=on_progress),
        )
        weights = outcome.weights_path.read_bytes()
        model = kind.load(weights, recipe, labels)
        if kind.calibrate is not None:
            recipe = kind.calibrate(
                model, manifest, ctx.blobs.get_bytes, labels=labels, recipe=recipe
            )
        if kind.count_intervals:  # after the kind's own choices: the counts it now makes
            recipe = calibrate_count_intervals(
                kind, model, manifest, ctx.blobs.get_bytes, labels=labels, recipe=recipe
            )
        test = kind.evaluate(
            model, manifest, ctx.blobs.get_bytes, split="test", labels=labels, recipe=recipe
        )
        if kind.count_intervals:  # whether the intervals hold on images nothing was chosen on
            test = add_interval_coverage(
                test, kind, model, manifest, ctx.blobs.get_bytes, labels=labels, recipe=recipe
            )
        key, digest = ctx.blobs.put_bytes(weights, prefix="models", suffix=".pt")
    except Cancelled:  # the reason is on the row already, written by whoever cancelled
        _mark(ctx, run_id, status=RunStatus.cancelled.value, finished_at=utcnow())
        raise
    except Interrupted:  # not a failure: the caller hands the run back to the queue
        _mark(ctx, run_id, status=RunStatus.queued.value)
        raise
    except BaseException as exc:
        _mark(
            ctx,
            run_id,
            status=RunStatus.failed.value,
            finished_at=utcnow(),
            error="".join(traceback.format_exception_only(exc)).strip()[:4000],
        )
        raise
    with ctx.db.session() as s:
        existing = s.scalar(select(ModelVersion.id).where(ModelVersion.training_run_id == run_id))
        if existing is not None:  # a concurrent redelivery finished first
            return existing
        project = s.get(Project, project_id)
        n = (
            s.scalar(
                select(func.count(ModelVersion.id)).where(ModelVersion.project_id == project_id)
            )
            or 0
        ) + 1
        parent = s.scalar(
            select(ModelVersion.id).where(
                ModelVersion.project_id == project_id, ModelVersion.stage == "production"
            )
        )
        mv = ModelVersion(
            project_id=project_id,
            name=f"{project.name}-m{n}",
            training_run_id=run_id,
            dataset_version_id=dv_id,
            parent_id=parent,
            artifact_key=key,
            sha256=digest,
            recipe=recipe.model_dump(mode="json"),
            metrics={
                "test": test,
                "val": outcome.metrics,
                "epochs": outcome.epochs_completed,
                "train_seconds": round(outcome.duration_s, 2),
                "best_epoch": outcome.best_epoch,
                "resumed": outcome.resumed,
                "primary_metric": kind.primary_metric,
            },
        )
        s.add(mv)
        run = s.get(TrainingRun, run_id)
        run.status = RunStatus.succeeded.value
        run.finished_at = utcnow()
        run.duration_s = round(time.monotonic() - started, 2)
        checkpoint, run.checkpoint_key = run.checkpoint_key, None
        s.flush()
        mv_id = mv.id
    if checkpoint:  # the model artifact is recorded; the resume point is no longer needed
        ctx.blobs.delete(checkpoint)
    consider_promotion(ctx, mv_id)
    return mv_id
