"""The store's tables (SQLAlchemy 2 declarative models).

=========== ======================================================================================
table       holds
=========== ======================================================================================
datasets    one training set: path, content fingerprint (unique), text/label columns, label names
examples    (dataset, id) → text (and second text of a pair), label index; id = 0-based row in the file
runs        one scan per (dataset, method): parameters, checkpoints, time; re-running replaces it
scores      (run, example) → suspicion score, rank, self-influence, suggested label, p(given label)
flags       an example flagged as mislabeled | biased | duplicate | other, by scan | explain | user,
            with a suggested label, a review status and the reviewer's label, note, who and when; a scan's
            flag keeps the run's rank of its example (the review pages' order)
review_     one review action on one flag: its batch (the flags one action changed together), action,
events      who, when, the reviewed fields before and after (with the version), the batch that undid it
=========== ======================================================================================

Labels are stored as indexes into ``datasets.label_names``. ``flags.version`` counts updates (every review
action adds 1 in the same statement), so a lost update would show as a missing increment.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, Float, ForeignKey, ForeignKeyConstraint, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

FLAG_KINDS = ("mislabeled", "biased", "duplicate", "other")
FLAG_SOURCES = ("scan", "explain", "user")
FLAG_STATUSES = ("open", "accepted", "rejected", "relabeled")
REVIEW_ACTIONS = ("add", "accept", "reject", "relabel", "reopen", "undo")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    text_columns: Mapped[list[str]] = mapped_column(JSON)
    label_column: Mapped[str] = mapped_column(String(200))
    label_names: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Example(Base):
    __tablename__ = "examples"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    text_pair: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    label: Mapped[int] = mapped_column(Integer)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("dataset_id", "method", name="uq_runs_dataset_method"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(100))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checkpoints: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (ForeignKeyConstraint(["dataset_id", "example_id"], ["examples.dataset_id", "examples.id"],
                                           ondelete="CASCADE"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    example_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    dataset_id: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    self_influence: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    suggested_label: Mapped[int] = mapped_column(Integer)
    label_probability: Mapped[float] = mapped_column(Float)


class Flag(Base):
    __tablename__ = "flags"
    __table_args__ = (UniqueConstraint("dataset_id", "example_id", "kind", name="uq_flags_example_kind"),
                      ForeignKeyConstraint(["dataset_id", "example_id"], ["examples.dataset_id", "examples.id"],
                                           ondelete="CASCADE"),
                      # the review pages walk these in order (keyset pagination), never sorting all flags
                      Index("ix_flags_dataset_id", "dataset_id", "id"),
                      Index("ix_flags_dataset_status_id", "dataset_id", "status", "id"),
                      Index("ix_flags_dataset_rank", "dataset_id", "rank", "id"),
                      Index("ix_flags_dataset_status_rank", "dataset_id", "status", "rank", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(Integer)
    example_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(20))
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    rank: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # the run's rank of the example (0: first)
    suggested_label: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="open")
    reviewer_label: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    who: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)


class ReviewEvent(Base):
    """One review action on one flag. ``before``/``after``: the reviewed fields (status, reviewer_label, note,
    who, version); ``before`` is None for ``add``. ``undone_by``: the batch of the undo that reverted it."""

    __tablename__ = "review_events"
    __table_args__ = (Index("ix_review_events_who", "dataset_id", "who", "id"),
                      Index("ix_review_events_flag", "flag_id", "id"),
                      Index("ix_review_events_batch", "batch"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id", ondelete="CASCADE"))
    batch: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(20))
    who: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    before: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    undone_by: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
