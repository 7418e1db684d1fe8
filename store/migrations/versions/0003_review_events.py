"""The review-event log: every review action on a flag, who, when, before and after (undo and the audit trail).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("batch", sa.String(32), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=False),
        sa.Column("undone_by", sa.String(32), nullable=True),
    )
    op.create_index("ix_review_events_who", "review_events", ["dataset_id", "who", "id"])
    op.create_index("ix_review_events_flag", "review_events", ["flag_id", "id"])
    op.create_index("ix_review_events_batch", "review_events", ["batch"])


def downgrade() -> None:
    op.drop_table("review_events")
