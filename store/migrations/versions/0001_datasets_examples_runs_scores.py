"""Datasets, examples, scan runs and their scores.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("text_columns", sa.JSON, nullable=False),
        sa.Column("label_column", sa.String(200), nullable=False),
        sa.Column("label_names", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "examples",
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_pair", sa.Text, nullable=True),
        sa.Column("label", sa.Integer, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("checkpoints", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("dataset_id", "method", name="uq_runs_dataset_method"),
    )
    op.create_table(
        "scores",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("example_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("dataset_id", sa.Integer, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("self_influence", sa.Float, nullable=True),
        sa.Column("suggested_label", sa.Integer, nullable=False),
        sa.Column("label_probability", sa.Float, nullable=False),
        sa.ForeignKeyConstraint(["dataset_id", "example_id"], ["examples.dataset_id", "examples.id"],
                                ondelete="CASCADE"),
    )


def downgrade() -> None:
    for table in ("scores", "runs", "examples", "datasets"):
        op.drop_table(table)
