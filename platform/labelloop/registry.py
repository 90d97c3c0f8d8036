"""Model versions: loading weights safely, and the promotion gate.

A candidate becomes production only if it beats the current production model on the
candidate's own frozen test split, with both evaluated there and both numbers stored."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import nn

from labelloop.context import Context
from labelloop.datasets.freeze import load_manifest
from labelloop.db.models import ModelVersion, Project, Promotion
from labelloop.domain import Stage
from labelloop.errors import ConfigError, InputError, NotFoundError
from labelloop.objects import count_truth_of
from labelloop.storage import sha256_bytes
from labelloop.training.calibration import temperature_of
from labelloop.training.kind import ModelKind, Prediction, View, get_kind
from labelloop.training.recipe import BaseRecipe, parse_recipe


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    labels: list[str]
    recipe: BaseRecipe
    kind: ModelKind
    # Fitted on the val split at training time (`training.calibration`); every prediction
    # and view this version makes carries calibrated probabilities.
    temperature: float = 1.0

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        preds = self.kind.predict(self.model, images, recipe=self.recipe, labels=self.labels)
        for p in preds:
            p.arrays = self.kind.calibrated(p.arrays, self.temperature)
        return preds

    def views(self, images: Sequence[np.ndarray], mode: str, passes: int) -> list[list[View]]:
        if self.kind.views is None:
            raise ConfigError(f"{self.kind.task} models have no multi-pass prediction")
        per_image = self.kind.views(
            self.model, images, recipe=self.recipe, labels=self.labels, mode=mode, passes=passes
        )
        for views in per_image:
            for v in views:
                v.arrays = self.kind.calibrated(v.arrays, self.temperature)
        return per_image

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.kind.embed is None:
            raise ConfigError(f"{self.kind.task} models have no embeddings")
        return self.kind.embed(self.model, images, recipe=self.recipe)


@lru_cache(maxsize=8)
def _load(
    blob_url: str, key: str, sha: str, recipe_json: str, labels: tuple[str, ...], temperature: float
):
    from labelloop.storage import BlobStore

    data = BlobStore(blob_url).get_bytes(key)
    if sha256_bytes(data) != sha:
        raise InputError(f"model artifact {key} does not match its recorded sha256")
    recipe = parse_recipe(json.loads(recipe_json))
    kind = get_kind(recipe.task)
    model = kind.load(data, recipe, list(labels))
    return LoadedModel(model, list(labels), recipe, kind, temperature)


def load_model_version(ctx: Context, model_version_id: int) -> LoadedModel:
    """The version's network in eval mode with its labels, recipe and kind; the weights
    are verified against the recorded sha256 and read weights-only (no unpickling)."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        project = s.get(Project, mv.project_id)
        labels = tuple(lc.name for lc in project.labels)
        key, sha, recipe = mv.artifact_key, mv.sha256, mv.recipe
        temperature = temperature_of(mv.metrics)
    recipe_json = json.dumps(recipe, sort_keys=True)
    return _load(ctx.settings.blob_url, key, sha, recipe_json, labels, temperature)


def find_model(s: Session, project_id: int | None, model: str | None = None) -> int | None:
    """The model version a caller means: `model` by name (or numeric id), within the
    project when one is given; without a name, the project's production model, else its
    newest (what scoring, selection and counting use by default). None when there is none."""
    q = select(ModelVersion.id)
    if project_id is not None:
        q = q.where(ModelVersion.project_id == project_id)
    if model:
        named = ModelVersion.name == model
        q = q.where(named | (ModelVersion.id == int(model)) if model.isdigit() else named)
    elif project_id is None:
        raise InputError("name a model version or a project")
    production_first = (ModelVersion.stage == Stage.production).desc()
    return s.scalar(q.order_by(production_first, ModelVersion.id.desc()).limit(1))


def production_model(ctx: Context, project_id: int) -> int | None:
    with ctx.db.session() as s:
        return s.scalar(
            select(ModelVersion.id).where(
                ModelVersion.project_id == project_id, ModelVersion.stage == Stage.production
            )
        )


def _set_stage(
    s, mv: ModelVersion, stage: Stage, reason: str, evidence: dict, forced: bool
) -> None:
    s.add(
        Promotion(
            model_version_id=mv.id,
            from_stage=mv.stage,
            to_stage=stage.value,
            reason=reason,
            evidence=evidence,
            forced=forced,
        )
    )
    mv.stage = stage.value


def promote(
    ctx: Context,
    model_version_id: int,
    reason: str,
    *,
    forced: bool = True,
    evidence: dict | None = None,
) -> None:
    """Make a version production and archive the previous one, recording why."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        if mv.stage == Stage.production:
            return
        for old in s.scalars(
            select(ModelVersion).where(
                ModelVersion.project_id == mv.project_id, ModelVersion.stage == Stage.production
            )
        ):
            _set_stage(s, old, Stage.archived, f"superseded by {mv.name}", evidence or {}, forced)
        _set_stage(s, mv, Stage.production, reason, evidence or {}, forced)


def split_fingerprint(manifest: dict, split: str = "test") -> str:
    """A hash of one split of a manifest: its items with their images and annotations.
    Two dataset versions with the same fingerprint score any model identically."""
    items = sorted(
        (it for it in manifest.get("items", []) if it.get("split") == split),
        key=lambda it: str(it.get("sha256")),
    )
    payload = {"labels": manifest.get("labels"), "items": items}
    return sha256_bytes(json.dumps(payload, sort_keys=True, default=str).encode())


def consider_promotion(ctx: Context, model_version_id: int) -> bool:
    """Promote the candidate if it beats production on the candidate's frozen test split.

    Production is evaluated there too, so both numbers come from the same images; both
    are stored with the candidate (`metrics.comparison`) and with the promotion."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        project = s.get(Project, mv.project_id)
        kind = get_kind(project.task)
        metric = kind.primary_metric
        task = project.task
        cand_metrics = mv.metrics.get("test") or {}
        cand = cand_metrics.get(metric)
        dv_id = mv.dataset_version_id
    prod_id = production_model(ctx, mv.project_id)
    if prod_id is None:
        promote(
            ctx,
            model_version_id,
            "first model of the project",
            forced=False,
            evidence={"metric": metric, "candidate": cand},
        )
        return True
    manifest = load_manifest(ctx, dv_id)
    with ctx.db.session() as s:
        prod_mv = s.get(ModelVersion, prod_id)
        prod_dv, prod_stored = prod_mv.dataset_version_id, (prod_mv.metrics or {}).get("test")
    stored = (prod_stored or {}).get(metric)
    same_split = prod_dv == dv_id or split_fingerprint(
        load_manifest(ctx, prod_dv)
    ) == split_fingerprint(manifest)
    same_definition = count_truth_of(prod_stored, task) == count_truth_of(cand_metrics, task)
    if stored is not None and same_split and same_definition:
        # Same images with the same annotations, measured the same way: evaluation is
        # deterministic, so the number production got on its own test split is the number
        # it would get here. Metrics stored under an older definition are measured again.
        prod_value, measured = stored, "stored: identical test split"
    else:
        prod = load_model_version(ctx, prod_id)
        prod_value = prod.kind.evaluate(
            prod.model,
            manifest,
            ctx.blobs.get_bytes,
            split="test",
            labels=prod.labels,
            recipe=prod.recipe,
        ).get(metric)
        measured = "evaluated on the candidate's test split"
    evidence = {
        "metric": metric,
        "candidate": cand,
        "production": prod_value,
        "production_id": prod_id,
        "production_measured": measured,
        "dataset_version_id": dv_id,
    }
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        mv.metrics = {**mv.metrics, "comparison": evidence}
    if cand is not None and (prod_value is None or cand > prod_value):
        promote(
            ctx,
            model_version_id,
            f"{metric} {cand:.4f} > production {prod_value or 0:.4f}",
            forced=False,
            evidence=evidence,
        )
        return True
    return False


ROUND_MODELS = ("production", "candidate")


@dataclass(frozen=True)
class RoundModel:
    """The model version a round is scored, selected and pre-annotated with, and why."""

    id: int
    name: str
    reason: str


def round_model(ctx: Context, trained_id: int, use: str = "production") -> RoundModel:
    """Which model a round after training uses: production, unless the caller asks for
    the candidate. A candidate that lost the promotion gate must never reach annotators
    by default: its predictions are what they correct, and the gate just said they are
    worse. Without any production model (nothing promoted yet) the candidate is all
    there is, and the reason says so."""
    if use not in ROUND_MODELS:
        raise InputError(f"round model must be one of {', '.join(ROUND_MODELS)}, got {use!r}")
    with ctx.db.session() as s:
        trained = s.get(ModelVersion, trained_id)
        if trained is None:
            raise NotFoundError(f"no model version with id {trained_id}")
        project_id, trained_name, trained_stage = trained.project_id, trained.name, trained.stage
    if use == "candidate":
        return RoundModel(trained_id, trained_name, f"requested: the trained model {trained_name}")
    if trained_stage == Stage.production:
        return RoundModel(trained_id, trained_name, f"production: {trained_name} was promoted")
    prod_id = production_model(ctx, project_id)
    if prod_id is None:
        return RoundModel(
            trained_id, trained_name, f"no production model; using the candidate {trained_name}"
        )
    with ctx.db.session() as s:
        prod_name = s.get(ModelVersion, prod_id).name
    return RoundModel(
        prod_id,
        prod_name,
        f"production: {prod_name} (the candidate {trained_name} was not promoted)",
    )
