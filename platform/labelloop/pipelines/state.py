"""The chain state: what one stage of a Celery chain hands the next.

Each stage task takes the state as a JSON object (Celery messages stay JSON), reads the ids
it needs, and returns the state with the ids it committed added, so a retried or
redelivered task gets exactly the same input. Every field is optional because the chain
fills them in as it goes; an unset field is left out of the message.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class ChainState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline_run_id: int | None = None  # set when the chain belongs to a pipeline run
    project: str | None = None  # unset only in a pipeline run's first message
    webhook_events: int | None = None  # events the pipeline run took into account
    synced: dict[str, Any] | None = None  # per linked source: what the sync pulled
    ingests: list[dict[str, Any]] | None = None  # one ingest report per source, in order
    dataset_version_id: int | None = None
    dataset_version: int | None = None  # its number
    dataset_version_created: bool | None = None
    training_run_id: int | None = None
    model_version_id: int | None = None
    # The model the round is scored, selected and pre-annotated with (production unless
    # the run asked for the candidate), its name and why it was chosen.
    round_model_version_id: int | None = None
    round_model: str | None = None
    round_model_reason: str | None = None
    train_errors: int | None = None  # transient training failures so far (retry count)
    score: dict[str, Any] | None = None  # method(s), images scored, throughput
    round_id: int | None = None
    guard: dict[str, Any] | None = None  # the selection guard's decision (control slice)
    push_id: int | None = None
    push_destination: str | None = None
    refreshed_rounds: list[int] | None = None  # open rounds given the round model's predictions
    stopped: str | None = None  # why a pipeline run stopped early
    continued: bool | None = None  # the pipeline task handed on to train -> ... -> push

    @classmethod
    def load(cls, message: dict[str, Any]) -> Self:
        """The state a task received; a ValidationError here is a malformed message."""
        return cls.model_validate(message)

    def message(self) -> dict[str, Any]:
        """The JSON object the next task receives."""
        return self.model_dump(mode="json", exclude_none=True)

    def but(self, **changes: Any) -> Self:
        """A copy with `changes` applied (None clears a field)."""
        return self.model_validate({**self.model_dump(), **changes})

    @property
    def scoring_model_id(self) -> int | None:
        """The model the score, select and push stages use: the round's model once the
        train stage chose it, else the model version the state carries."""
        return self.round_model_version_id or self.model_version_id

    @property
    def project_name(self) -> str:
        if self.project is None:
            raise ValueError("the chain state names no project")
        return self.project
