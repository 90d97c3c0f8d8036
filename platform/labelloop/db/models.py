"""The schema. Unique keys carry the idempotency invariants (see docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # sha256 of the project's own webhook secret (labelloop.access); None: the shared one.
    webhook_secret_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    labels: Mapped[list[LabelClass]] = relationship(
        back_populates="project", order_by="LabelClass.index", cascade="all, delete-orphan"
    )


class LabelClass(Base):
    __tablename__ = "label_class"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    index: Mapped[int] = mapped_column(Integer)
    color: Mapped[str | None] = mapped_column(String(16))
    project: Mapped[Project] = relationship(back_populates="labels")


class Image(Base):
    """Pixels, stored once by content hash; projects reach images through source items."""

    __tablename__ = "image"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    blob_key: Mapped[str] = mapped_column(String(300))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SourceItem(Base):
    """One image as a source knows it (a Label Studio task, a file in an export)."""

    __tablename__ = "source_item"
    __table_args__ = (UniqueConstraint("project_id", "source", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), index=True)
    source: Mapped[str] = mapped_column(String(500))
    external_id: Mapped[str] = mapped_column(String(500))
    uri: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Lets a writer link rows not yet flushed, so an ingest inserts a batch at once.
    image: Mapped[Image] = relationship()


class Annotation(Base):
    """One annotator's labels for one source item at one revision (never edited in place)."""

    __tablename__ = "annotation"
    __table_args__ = (UniqueConstraint("project_id", "source", "external_id", "revision"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    source_item_id: Mapped[int] = mapped_column(ForeignKey("source_item.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), index=True)
    source: Mapped[str] = mapped_column(String(500))
    external_id: Mapped[str] = mapped_column(String(500))
    revision: Mapped[str] = mapped_column(String(64))
    annotator: Mapped[str | None] = mapped_column(String(200))
    is_ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    # active: counts for training; superseded by a newer revision, or deleted/skipped upstream.
    state: Mapped[str] = mapped_column(String(16), default="active", index=True)
    shapes: Mapped[list[Any]] = mapped_column(default=list)
    source_updated_at: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source_item: Mapped[SourceItem] = relationship()
    image: Mapped[Image] = relationship()


class DatasetVersion(Base):
    __tablename__ = "dataset_version"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_version.id"))
    split_seed: Mapped[int] = mapped_column(Integer)
    manifest_key: Mapped[str] = mapped_column(String(300))
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetItem(Base):
    __tablename__ = "dataset_item"
    __table_args__ = (UniqueConstraint("dataset_version_id", "image_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"))
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotation.id"))
    split: Mapped[str] = mapped_column(String(8))


class TrainingRun(Base):
    __tablename__ = "training_run"
    __table_args__ = (UniqueConstraint("dataset_version_id", "recipe_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_version.id"))
    recipe: Mapped[dict[str, Any]] = mapped_column()
    recipe_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(200))
    # The worker (Celery node name) of the latest attempt: who holds the training now.
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)
    # The latest epoch checkpoint in the blob store: a redelivered task on another host
    # resumes from it instead of starting over.
    checkpoint_key: Mapped[str | None] = mapped_column(String(300))
    checkpoint_epoch: Mapped[int | None] = mapped_column(Integer)


class ModelVersion(Base):
    __tablename__ = "model_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), unique=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_run.id"), unique=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_version.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    artifact_key: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]] = mapped_column()
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stage: Mapped[str] = mapped_column(String(16), default="candidate")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Promotion(Base):
    """Every stage change with its evidence: history is appended, never rewritten."""

    __tablename__ = "promotion"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), index=True)
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Score(Base):
    __tablename__ = "score"
    __table_args__ = (UniqueConstraint("model_version_id", "image_id", "method"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    # prediction blob key and predicted counts, so a push never re-runs the model
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Embedding(Base):
    """Pooled encoder features of one image under one model version (float32, little
    endian): what diversity strategies (core-set, hybrid) compare."""

    __tablename__ = "embedding"
    __table_args__ = (UniqueConstraint("model_version_id", "image_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationRound(Base):
    __tablename__ = "annotation_round"
    __table_args__ = (UniqueConstraint("project_id", "params_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    strategy: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RoundItem(Base):
    __tablename__ = "round_item"
    __table_args__ = (UniqueConstraint("round_id", "image_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("annotation_round.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"))
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    # Which annotator batch of the round the image is in (1..): rounds are cut into
    # batches of the per-annotator size, in rank order.
    batch: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Push(Base):
    """One push of a round to a target, with the id map that lets labels merge back."""

    __tablename__ = "push"
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("annotation_round.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PushItem(Base):
    __tablename__ = "push_item"
    __table_args__ = (UniqueConstraint("push_id", "image_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    push_id: Mapped[int] = mapped_column(ForeignKey("push.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"))
    external_task_id: Mapped[str] = mapped_column(String(200))


class PipelineRun(Base):
    """One request to run the loop for a project (sync -> freeze -> train -> ... -> push),
    from beat, a webhook, the API or the CLI.

    `active_project_id` holds the project id while the run is queued or running and is
    cleared when it ends: its unique key is what allows one pipeline per project at a time,
    across processes and hosts. A trigger that finds one active is recorded as `coalesced`
    into it. `scheduled_for` makes a beat firing idempotent (one run per project and slot)."""

    __tablename__ = "pipeline_run"
    __table_args__ = (UniqueConstraint("project_id", "scheduled_for"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    active_project_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    trigger: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str | None] = mapped_column(String(16))
    coalesced_into_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_run.id"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(200))
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_run.id"))
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEvent(Base):
    """One annotation event Label Studio sent. `pipeline_run_id` is the pipeline that took
    it into account; events without one are still pending (they count towards a retrain)."""

    __tablename__ = "webhook_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    action: Mapped[str] = mapped_column(String(40))
    ls_project: Mapped[int | None] = mapped_column(Integer)
    annotation_ids: Mapped[list[Any]] = mapped_column(default=list)
    annotations: Mapped[int] = mapped_column(Integer, default=0)
    pipeline_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("pipeline_run.id", ondelete="SET NULL"), index=True
    )
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token of the REST API and the dashboard: a role, optionally one project.

    Only the token's sha256 is stored (labelloop.access says why that suffices); the name
    is unique among the tokens not revoked, so a name can be reused after a revocation."""

    __tablename__ = "api_token"
    __table_args__ = (
        Index(
            "uq_api_token_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
