"""The scan rank on each flag, and the indexes that let the review pages walk flags in order without sorting.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {"ix_flags_dataset_id": ["dataset_id", "id"], "ix_flags_dataset_status_id": ["dataset_id", "status", "id"],
           "ix_flags_dataset_rank": ["dataset_id", "rank", "id"],
           "ix_flags_dataset_status_rank": ["dataset_id", "status", "rank", "id"]}


def upgrade() -> None:
    # a plain ADD COLUMN: a batch (copy and rename) migration would drop the flags table, and SQLite's foreign
    # keys would cascade that into the review log
    op.add_column("flags", sa.Column("rank", sa.Integer, nullable=True))
    op.execute("UPDATE flags SET rank = (SELECT scores.rank FROM scores WHERE scores.run_id = flags.run_id "
               "AND scores.example_id = flags.example_id) WHERE run_id IS NOT NULL")
    for name, columns in INDEXES.items():
        op.create_index(name, "flags", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "flags")
    op.drop_column("flags", "rank")
