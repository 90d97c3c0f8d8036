"""One Settings object for the CLI, the API, the workers and Alembic.

Values come from `LABELLOOP_*` environment variables or a `.env` file in the working
directory. Embedded defaults (SQLite file, local blob folder, in-memory broker) make a
fresh machine work with no configuration; production sets the URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABELLOOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("labelloop-data"), description="blobs, checkpoints, exports"
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; default: SQLite in data_dir")
    blob_url: str = Field(
        default="", description="fsspec URL of the blob store; default: data_dir/blobs"
    )
    broker_url: str = Field(
        default="memory://", description="Celery broker; memory:// = in-process"
    )
    result_backend: str = Field(
        default="", description="Celery result backend; default follows broker"
    )
    redis_url: str = Field(
        default="", description="Redis for locks; default: the broker if it is Redis"
    )
    max_image_pixels: int = Field(default=100_000_000, description="refuse larger images (bombs)")
    labelstudio_url: str = ""
    labelstudio_token: SecretStr = SecretStr("")
    labelstudio_image_hosts: list[str] = Field(
        default_factory=list,
        description="hosts (and 's3://bucket's) a Label Studio sync may read task images from "
        "besides the Label Studio server itself; JSON list in the environment",
    )
    cvat_url: str = Field(default="", description="CVAT server for `push --to cvat`")
    cvat_token: SecretStr = SecretStr("")
    cvat_user: str = ""
    cvat_password: SecretStr = SecretStr("")
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # A dead worker's training lock frees itself after this; a live one renews it every
    # third of it, so a training of any length keeps its lock.
    training_lock_ttl_s: int = Field(default=300, ge=3)
    lock_retry_s: float = Field(default=30, gt=0, description="wait before retrying a busy lock")
    # Redis redelivers a task that was not acknowledged within this (a killed worker's);
    # it must be longer than the longest training.
    visibility_timeout_s: int = Field(default=12 * 3600, ge=1)
    task_max_retries: int = Field(
        default=8, ge=0, description="retries of a task after a transient error (exponential)"
    )
    task_retry_backoff_max_s: int = Field(default=600, ge=1)
    score_shard_size: int = Field(
        default=256, ge=1, description="pool images per scoring task (Celery chord shards)"
    )
    nightly_cron: str = Field(
        default="0 2 * * *", description="default beat crontab per project (m h dom mon dow)"
    )
    nightly_budget: int = Field(default=20, description="images per nightly annotation round")
    selection_control_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="share of each pipeline round drawn at random as a control slice, which "
        "the selection guard compares with the strategy's picks (0: no control, no guard)",
    )
    nightly_push_to: str = Field(
        default="file", description="push target of pipelines (labelloop.push.targets)"
    )
    # Webhook-triggered retraining (each project may override these).
    retrain_min_annotations: int = Field(
        default=20, ge=1, description="annotation events that trigger a retrain"
    )
    retrain_debounce_s: float = Field(
        default=60, ge=0, description="quiet time after the last event before a retrain starts"
    )
    retrain_debounce_max_s: float = Field(
        default=600, ge=0, description="longest a retrain waits for a burst of events to end"
    )
    # A queued or running pipeline without any sign of life for this long is abandoned.
    pipeline_stale_s: int = Field(default=24 * 3600, ge=60)
    # A queued run is committed before its first task is sent: if the sender died in
    # between, or the message was lost, beat's sweep sends it again once it has not
    # started this long after it was due.
    pipeline_unsent_s: int = Field(default=600, ge=30)
    publish_timeout_s: float = Field(
        default=5, gt=0, description="how long sending a task may wait on a stalled broker"
    )
    # REST API: bearer tokens by name (JSON object in the environment), and the shared
    # secret Label Studio sends with every webhook.
    api_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    api_max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="largest request body the API reads (413 beyond; a Label Studio webhook "
        "carries whole annotations, brush masks included)",
    )
    webhook_secret: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'labelloop.db'}"
        if not self.blob_url:
            self.blob_url = str(self.data_dir / "blobs")
        if not self.result_backend:
            self.result_backend = (
                self.broker_url if self.broker_url.startswith("redis") else "cache+memory://"
            )
        if not self.redis_url and self.broker_url.startswith("redis"):
            self.redis_url = self.broker_url
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError("split_fractions must sum to 1")
        return self

    @classmethod
    def embedded_at(cls, data_dir: Path, **overrides) -> Settings:
        """Embedded settings in `data_dir` with every URL explicit, whatever LABELLOOP_* the
        environment holds: a demo or a simulation must never reach a production database."""
        values = {
            "data_dir": data_dir,
            "database_url": "",
            "blob_url": "",
            "broker_url": "memory://",
            "result_backend": "",
            "redis_url": "",
        }
        return cls(**{**values, **overrides})

    @property
    def embedded(self) -> bool:
        """True when the broker lives in this process (demo / single-machine use)."""
        return self.broker_url.startswith("memory://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
