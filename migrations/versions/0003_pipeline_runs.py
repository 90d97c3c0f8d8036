"""pipeline runs (triggers, coalescing, progress), webhook events, training run worker

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 08:39:41
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("active_project_id", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("coalesced_into_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("task_id", sa.String(length=200), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["coalesced_into_id"],
            ["pipeline_run.id"],
            name=op.f("fk_pipeline_run_coalesced_into_id_pipeline_run"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_pipeline_run_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["training_run_id"],
            ["training_run.id"],
            name=op.f("fk_pipeline_run_training_run_id_training_run"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_run")),
        sa.UniqueConstraint("active_project_id", name=op.f("uq_pipeline_run_active_project_id")),
        sa.UniqueConstraint(
            "project_id", "scheduled_for", name=op.f("uq_pipeline_run_project_id_scheduled_for")
        ),
    )
    op.create_index(op.f("ix_pipeline_run_project_id"), "pipeline_run", ["project_id"])
    op.create_index(op.f("ix_pipeline_run_status"), "pipeline_run", ["status"])
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("ls_project", sa.Integer(), nullable=True),
        sa.Column("annotation_ids", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.Integer(), nullable=False),
        sa.Column("pipeline_run_id", sa.Integer(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pipeline_run_id"],
            ["pipeline_run.id"],
            name=op.f("fk_webhook_event_pipeline_run_id_pipeline_run"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_webhook_event_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_event")),
    )
    op.create_index(op.f("ix_webhook_event_pipeline_run_id"), "webhook_event", ["pipeline_run_id"])
    op.create_index(op.f("ix_webhook_event_project_id"), "webhook_event", ["project_id"])
    with op.batch_alter_table("training_run") as batch:
        batch.add_column(sa.Column("worker", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_run") as batch:
        batch.drop_column("worker")
    op.drop_index(op.f("ix_webhook_event_project_id"), table_name="webhook_event")
    op.drop_index(op.f("ix_webhook_event_pipeline_run_id"), table_name="webhook_event")
    op.drop_table("webhook_event")
    op.drop_index(op.f("ix_pipeline_run_status"), table_name="pipeline_run")
    op.drop_index(op.f("ix_pipeline_run_project_id"), table_name="pipeline_run")
    op.drop_table("pipeline_run")
