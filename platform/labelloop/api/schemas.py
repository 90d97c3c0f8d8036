"""Request and response bodies of the REST API (what /openapi.json documents)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from labelloop.kinds import TASKS
from labelloop.pipelines.runs import PipelineParams
from labelloop.push.targets import NAMES as PUSH_TARGETS

# Row ids are PostgreSQL integers: anything outside that range names no row, and is
# refused (422) before it reaches the database.
MAX_ID = 2**31 - 1
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="a pipeline run's id")]
ModelVersionId = Annotated[int, Path(ge=1, le=MAX_ID, description="a model version's id")]


class ErrorOut(BaseModel):
    detail: str = Field(description="what was wrong, naming the field, id or name")


class HealthOut(BaseModel):
    status: str = Field(description="ok")
    database: str = Field(description="ok when a query succeeded")
    version: str


class TriggersOut(BaseModel):
    active: bool = Field(description="false pauses the schedule and webhook retrains")
    cron: str = Field(description="beat crontab of the project's pipeline (m h dom mon dow)")
    min_annotations: int = Field(description="annotation events that start a retrain")
    debounce_s: float = Field(description="quiet time after the last event")
    budget: int = Field(description="images selected per round")
    push_to: str = Field(description=" | ".join(PUSH_TARGETS))
    recipe: dict[str, Any] = Field(description="recipe overrides of the project's pipelines")


class ProjectOut(BaseModel):
    name: str
    task: str = Field(description=" | ".join(TASKS))
    labels: list[str]
    triggers: TriggersOut
    labelstudio: list[dict[str, Any]] = Field(
        description="linked Label Studio projects the pipeline syncs first"
    )


class DatasetVersionOut(BaseModel):
    id: int
    number: int
    content_hash: str
    parent_id: int | None
    images: int | None
    splits: dict[str, int] | None
    shapes: dict[str, dict[str, int]] | None = Field(description="shapes per split and class")
    created_at: str


class ModelVersionOut(BaseModel):
    id: int
    name: str
    stage: str = Field(description="candidate | production | archived")
    task: str
    dataset_version: int | None = Field(description="number of the dataset version")
    dataset_version_id: int
    training_run_id: int
    recipe_hash: str | None
    sha256: str = Field(description="of the artifact; downloads carry it as a header")
    metric: str = Field(description="the task's primary metric, e.g. mean_dice")
    test: float | None = Field(description="primary metric on the frozen test split")
    metrics: dict[str, Any] = Field(description="every test-split metric")
    val_metrics: dict[str, Any] = Field(description="metrics on the validation split")
    comparison: dict[str, Any] | None = Field(
        description="the promotion gate's evidence: candidate vs production on the same images"
    )
    train_seconds: float | None
    epochs: int | None
    resumed: bool | None = Field(description="training resumed from a checkpoint")
    stage_reason: str | None = Field(description="why it reached its stage")
    forced: bool | None = Field(description="the stage was set by hand, past the gate")
    created_at: str


class RoundItemOut(BaseModel):
    image_id: int
    rank: int
    score: float | None
    predicted_counts: dict[str, Any] | None


class PushOut(BaseModel):
    id: int
    target: str
    destination: str
    tasks: int


class RoundProgressOut(BaseModel):
    images: int
    sent: int = Field(description="images pushed to an annotation tool")
    annotated: int = Field(description="images with an active annotation")
    skipped: int = Field(description="images annotators skipped (and nobody annotated)")
    left: int


class RoundOut(BaseModel):
    id: int
    number: int
    strategy: str
    status: str
    model_version_id: int | None
    size: int
    items: list[RoundItemOut] = Field(description="the first images, most informative first")
    pushes: list[PushOut]
    progress: RoundProgressOut = Field(description="how far annotators are with the round")


class ProgressOut(BaseModel):
    """The latest progress the trainer reported (validation metrics appear as val_*)."""

    model_config = ConfigDict(extra="allow")

    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    loss: float | None = None


class TrainingOut(BaseModel):
    id: int
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    attempts: int = Field(description="starts, including resumptions after a lost worker")
    worker: str | None = Field(description="the worker of the latest attempt")
    progress: ProgressOut
    checkpoint_epoch: int | None = Field(description="epoch of the checkpoint it resumes from")
    error: str | None
    duration_s: float | None


class RoundModelOut(BaseModel):
    id: int
    name: str | None
    reason: str | None = Field(description="production, or why another model was used")


class RunOut(BaseModel):
    id: int
    project: str
    trigger: str = Field(description="api | cli | beat | webhook")
    requested_by: str | None = Field(description="the API token's name, beat or labelstudio")
    status: str = Field(
        description="queued | running | succeeded | stopped (nothing new) | failed | "
        "cancelled | coalesced (into a run already active)"
    )
    stage: str | None = Field(description="sync | freeze | train | score | select | push")
    coalesced_into: int | None
    params: dict[str, Any]
    state: dict[str, Any] = Field(description="ids the stages produced so far")
    message: str | None = Field(description="why it stopped, failed or was coalesced")
    task_id: str | None
    webhook_events: int = Field(description="annotation events this run took into account")
    dataset_version_id: int | None
    model_version_id: int | None = Field(description="the model version the run trained")
    round_model: RoundModelOut | None = Field(
        None, description="the model that scored and pre-annotated the round, and why"
    )
    round_progress: RoundProgressOut | None = Field(
        None, description="annotators' progress on the round the run pushed"
    )
    training: TrainingOut | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    scheduled_for: str | None
    not_before: str | None = Field(description="a debounced run starts no earlier than this")


class TriggerIn(PipelineParams):
    """A retrain's parameters; unset ones come from the project's triggers, then the
    global defaults."""


class TriggerOut(BaseModel):
    run: RunOut
    coalesced: bool = Field(description="true: a run was already active; this one joined it")


# A reason is stored as text: a NUL byte is refused when the body is read (422), before
# the state of the run or model version is looked at.
STORABLE_TEXT = r"^[^\x00]*$"


class CancelIn(BaseModel):
    reason: str = Field(
        "cancelled through the API", min_length=1, max_length=2000, pattern=STORABLE_TEXT
    )


class PromoteIn(BaseModel):
    reason: str = Field(
        min_length=1,
        max_length=2000,
        pattern=STORABLE_TEXT,
        description="recorded with the promotion",
    )


class WebhookOut(BaseModel):
    status: str = Field(
        description="ignored (untracked action) | pending (below the threshold) | joined (a "
        "queued retrain takes it along) | triggered (a retrain was queued) | waiting (a "
        "retrain runs; it counts for the next) | paused (the project's triggers are off)"
    )
    event_id: int | None = None
    pending_annotations: int = 0
    threshold: int | None = None
    pipeline_run_id: int | None = None
