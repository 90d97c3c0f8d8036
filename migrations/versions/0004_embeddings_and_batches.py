"""embeddings per model version; annotator batches in rounds

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_embedding_image_id_image")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_embedding_model_version_id_model_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding")),
        sa.UniqueConstraint(
            "model_version_id", "image_id", name=op.f("uq_embedding_model_version_id_image_id")
        ),
    )
    op.create_index(op.f("ix_embedding_image_id"), "embedding", ["image_id"])
    op.create_index(op.f("ix_embedding_model_version_id"), "embedding", ["model_version_id"])
    with op.batch_alter_table("round_item") as batch:
        batch.add_column(sa.Column("batch", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("round_item") as batch:
        batch.drop_column("batch")
    op.drop_index(op.f("ix_embedding_model_version_id"), table_name="embedding")
    op.drop_index(op.f("ix_embedding_image_id"), table_name="embedding")
    op.drop_table("embedding")
