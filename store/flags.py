"""Review actions on flags: list, accept, reject, relabel, add.

Every action is one conditional ``UPDATE``/``INSERT`` in one transaction (``version = version + 1`` computed
by the database, never read-modify-write in Python), so reviewers working at once in several processes lose no
update; the last decision on a flag wins and every decision is counted in ``version``. An update locks its rows
in id order before changing them, so reviewers of overlapping flags on PostgreSQL cannot deadlock.
"""

from __future__ import annotations

import datetime as dt
import getpass
from dataclasses import dataclass
from typing import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from datablame.influence.errors import DatablameError, check_choice

from .db import Database
from .schema import FLAG_KINDS, FLAG_SOURCES, FLAG_STATUSES, Dataset, Example, Flag, utcnow


@dataclass
class FlagView:
    """A flag as shown to a reviewer, labels by name (None where there is none)."""

    id: int
    example_id: int
    text: str
    label: str
    kind: str
    source: str
    suggested_label: str | None
    status: str
    reviewer_label: str | None
    note: str
    who: str
    updated_at: dt.datetime
    version: int


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def label_index(dataset: Dataset, label: str) -> int:
    """The index of a label name of ``dataset``."""
    if label not in dataset.label_names:
        raise DatablameError(f"unknown label {label!r} (known: {', '.join(dataset.label_names)})",
                             "pass one of the dataset's labels")
    return dataset.label_names.index(label)


def list_flags(db: Database, dataset: Dataset, status: str | None = None, kind: str | None = None) -> list[FlagView]:
    """The dataset's flags, oldest first, optionally of one status and one kind."""
    check_choice("status", status, FLAG_STATUSES, "--status")
    check_choice("kind", kind, FLAG_KINDS, "--kind")
    query = (select(Flag, Example).join(Example, (Example.dataset_id == Flag.dataset_id)
                                        & (Example.id == Flag.example_id))
             .where(Flag.dataset_id == dataset.id).order_by(Flag.id))
    if status:
        query = query.where(Flag.status == status)
    if kind:
        query = query.where(Flag.kind == kind)
    names = dataset.label_names

    def name(i: int | None) -> str | None:
        return None if i is None else names[i]

    with db.transaction() as session:
        return [FlagView(f.id, f.example_id, e.text if e.text_pair is None else f"{e.text} / {e.text_pair}",
                         names[e.label], f.kind, f.source, name(f.suggested_label), f.status,
                         name(f.reviewer_label), f.note, f.who, f.updated_at, f.version)
                for f, e in session.execute(query).all()]


def _update(db: Database, dataset: Dataset, ids: Sequence[int], **values) -> int:
    ids = sorted(set(int(i) for i in ids))
    if not ids:
        raise DatablameError("no flag id given", "pass one or more ids from 'datablame flags WORKDIR list'")
    with db.transaction() as session:
        # lock the rows in id order first: one UPDATE of several rows locks them in whatever order it scans them,
        # so two on PostgreSQL could deadlock (SQLite's BEGIN IMMEDIATE serializes writers already)
        session.execute(select(Flag.id).where(Flag.dataset_id == dataset.id, Flag.id.in_(ids)).order_by(Flag.id)
                        .with_for_update())
        done = session.execute(update(Flag).where(Flag.dataset_id == dataset.id, Flag.id.in_(ids))
                               .values(**values, updated_at=utcnow(), version=Flag.version + 1)
                               .returning(Flag.id)).scalars().all()
        unknown = sorted(set(ids) - set(done))
        if unknown:  # raising rolls the transaction back: all or nothing
            raise DatablameError(f"unknown flag id {', '.join(map(str, unknown))}",
                                 "see the ids with 'datablame flags WORKDIR list'")
    return len(done)


def set_status(db: Database, dataset: Dataset, ids: Sequence[int], status: str, who: str | None = None) -> int:
    """Set the status of these flags (``accepted`` or ``rejected``); returns how many were updated.

    An unknown id changes nothing and raises DatablameError.
    """
    check_choice("status", status, ("accepted", "rejected", "open"))
    return _update(db, dataset, ids, status=status, who=who if who is not None else default_reviewer())


def relabel(db: Database, dataset: Dataset, flag_id: int, label: str, who: str | None = None,
            note: str | None = None) -> None:
    """Mark a flag ``relabeled`` with the reviewer's label (a label name of the dataset)."""
    values = {"status": "relabeled", "reviewer_label": label_index(dataset, label),
              "who": who if who is not None else default_reviewer()}
    if note is not None:
        values["note"] = note
    _update(db, dataset, [flag_id], **values)


def add_flag(db: Database, dataset: Dataset, example_id: int, kind: str, note: str = "", source: str = "user",
             suggested_label: str | None = None, who: str | None = None) -> int:
    """Flag an example (by id, its 0-based row); returns the new flag's id. One flag per example and kind."""
    check_choice("kind", kind, FLAG_KINDS, "--kind")
    check_choice("source", source, FLAG_SOURCES)
    suggested = None if suggested_label is None else label_index(dataset, suggested_label)
    now = utcnow()
    with db.transaction() as session:
        if session.get(Example, (dataset.id, int(example_id))) is None:
            raise DatablameError(f"unknown example id {example_id}",
                                 "example ids are 0-based rows of the training file")
        existing = session.scalar(select(Flag.id).where(Flag.dataset_id == dataset.id,
                                                        Flag.example_id == int(example_id), Flag.kind == kind))
        if existing is not None:
            raise DatablameError(f"example {example_id} is already flagged {kind} (flag {existing})",
                                 f"review flag {existing} instead")
        try:
            return session.execute(insert(Flag).values(
                dataset_id=dataset.id, example_id=int(example_id), kind=kind, source=source, run_id=None,
                suggested_label=suggested, status="open", note=note, who=who if who is not None else default_reviewer(),
                created_at=now, updated_at=now, version=1).returning(Flag.id)).scalar_one()
        except IntegrityError:
            raise DatablameError(f"example {example_id} was flagged {kind} at the same moment",
                                 "list the flags and review that one") from None


def flag_examples(db: Database, dataset: Dataset, example_ids: Sequence[int], kind: str, note: str = "",
                  source: str = "explain", who: str | None = None) -> list[int]:
    """Flag each example not yet flagged ``kind`` (e.g. the top supporters of a biased slice, from explain);
    returns the new flags' ids. Examples already flagged ``kind`` keep their flag and its review."""
    with db.transaction() as session:
        flagged = set(session.scalars(select(Flag.example_id).where(Flag.dataset_id == dataset.id,
                                                                    Flag.kind == kind)))
    return [add_flag(db, dataset, i, kind, note, source, who=who)
            for i in dict.fromkeys(int(x) for x in example_ids) if i not in flagged]
