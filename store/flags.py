"""Review actions on flags: list and page through them, accept, reject, relabel, reopen, add, undo.

Every action is one conditional ``UPDATE``/``INSERT`` in one transaction (``version = version + 1`` computed
by the database, never read-modify-write in Python), so reviewers working at once in several processes lose no
update. An update locks its rows in id order before changing them, so reviewers of overlapping flags on PostgreSQL
cannot deadlock. An action given the versions its reviewer saw (``expected``) changes nothing and raises
:class:`StaleFlag`, with the flags as they are now, when someone else changed one of them first; without them,
the last decision wins. Every action is appended to the review-event log (``review_events``: who, when, before
and after, in the same transaction): :func:`undo` reverts a reviewer's latest action from it and
:func:`history` reads it as the audit trail.
"""

from __future__ import annotations

import datetime as dt
import getpass
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

from sqlalchemy import Select, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from datablame.influence.errors import DatablameError, check_choice

from .db import Database
from .schema import (FLAG_KINDS, FLAG_SOURCES, FLAG_STATUSES, Dataset, Example, Flag, ReviewEvent, Score,
                     utcnow)

REVIEWED = ("status", "reviewer_label", "note", "who")
"""The fields a review action changes and undo restores (with the version, in the event log)."""
SORTS = ("suspicion", "id")
"""Orders of :func:`page_flags`: most suspicious first (the scan's rank; flags without one last), or oldest first."""


@dataclass
class FlagView:
    """A flag as shown to a reviewer, labels by name (None where there is none); score: the scan's suspicion
    score of the example (None for flags that no scan made)."""

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
    score: float | None = None


@dataclass
class FlagFilter:
    """Which flags: each field set narrows the selection (label names; ``text``: a case-insensitive substring of
    the example's text)."""

    status: str | None = None
    kind: str | None = None
    label: str | None = None
    suggested: str | None = None
    source: str | None = None
    text: str | None = None


@dataclass
class FlagPage:
    """One page of flags, the cursor of the next one (None after the last) and how many flags match in all (on the
    first page; None on the others)."""

    flags: list[FlagView]
    next: str | None
    total: int | None


@dataclass
class EventView:
    """One entry of the review-event log, labels by name. before/after: status, reviewer_label, note, who,
    version (before is None for ``add``); undone_by: the batch of the undo that reverted it."""

    id: int
    flag_id: int
    batch: str
    action: str
    who: str
    at: dt.datetime
    before: dict | None
    after: dict
    undone_by: str | None


class StaleFlag(DatablameError):
    """Someone else changed these flags since the reviewer saw them; nothing was written. ``current``: the flags
    as they are now."""

    def __init__(self, current: list[FlagView]):
        ids = ", ".join(str(f.id) for f in current)
        super().__init__(f"flag {ids} changed since you saw it (now {', '.join(f.status for f in current)})",
                         "look at its current state and decide again")
        self.current = current


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


def _name(dataset: Dataset, i: int | None) -> str | None:
    return None if i is None else dataset.label_names[i]


def _where(dataset: Dataset, where: FlagFilter) -> list:
    """The SQL conditions of a filter (its choices checked, its label names turned into indexes)."""
    check_choice("status", where.status, FLAG_STATUSES, "--status")
    check_choice("kind", where.kind, FLAG_KINDS, "--kind")
    check_choice("source", where.source, FLAG_SOURCES)
    conditions = [Flag.dataset_id == dataset.id]
    if where.status:
        conditions.append(Flag.status == where.status)
    if where.kind:
        conditions.append(Flag.kind == where.kind)
    if where.source:
        conditions.append(Flag.source == where.source)
    if where.label is not None:
        conditions.append(Example.label == label_index(dataset, where.label))
    if where.suggested is not None:
        conditions.append(Flag.suggested_label == label_index(dataset, where.suggested))
    if where.text:
        conditions.append(Example.text.icontains(where.text, autoescape=True))
    return conditions


def _joined(query: Select) -> Select:
    """``query`` over flags joined with their examples and (outer) their scan's scores."""
    return (query.select_from(Flag)
            .join(Example, (Example.dataset_id == Flag.dataset_id) & (Example.id == Flag.example_id))
            .outerjoin(Score, (Score.run_id == Flag.run_id) & (Score.example_id == Flag.example_id)))


def _view(dataset: Dataset, f: Flag, e: Example, score: float | None) -> FlagView:
    return FlagView(f.id, f.example_id, e.text if e.text_pair is None else f"{e.text} / {e.text_pair}",
                    dataset.label_names[e.label], f.kind, f.source, _name(dataset, f.suggested_label), f.status,
                    _name(dataset, f.reviewer_label), f.note, f.who, f.updated_at, f.version, score)


def _rows(session: Session, conditions: list, order: list, limit: int | None = None) -> list:
    """(flag, example, scan score) rows of the flags that meet ``conditions``, in ``order``."""
    query = _joined(select(Flag, Example, Score.score)).where(*conditions).order_by(*order).limit(limit)
    return session.execute(query).all()


def _views(session: Session, dataset: Dataset, conditions: list, order: list, limit: int | None = None
           ) -> list[FlagView]:
    return [_view(dataset, f, e, score) for f, e, score in _rows(session, conditions, order, limit)]


def list_flags(db: Database, dataset: Dataset, status: str | None = None, kind: str | None = None) -> list[FlagView]:
    """The dataset's flags, oldest first, optionally of one status and one kind."""
    with db.transaction() as session:
        return _views(session, dataset, _where(dataset, FlagFilter(status, kind)), [Flag.id])


def get_flags(db: Database, dataset: Dataset, ids: Sequence[int]) -> list[FlagView]:
    """These flags (of the dataset) as they are now, in id order; unknown ids are left out."""
    with db.transaction() as session:
        return [f for chunk in _chunks(sorted({int(i) for i in ids})) for f in _views(
            session, dataset, [Flag.dataset_id == dataset.id, Flag.id.in_(chunk)], [Flag.id])]


def page_flags(db: Database, dataset: Dataset, where: FlagFilter = FlagFilter(), sort: str = "suspicion",
               after: str | None = None, limit: int = 50) -> FlagPage:
    """One page of the flags that match ``where``, in ``sort`` order (:data:`SORTS`), from the ``after`` cursor
    (a :attr:`FlagPage.next`; None for the first page, which alone counts the matches: ``total`` is None on the
    others). Keyset pagination over the flags' indexes: a page costs the same wherever it is, and no page sorts
    all the flags. By suspicion: the scan-ranked flags by rank (cursor ``r<rank>.<id>``), then the others by id
    (``u<id>``)."""
    check_choice("sort", sort, SORTS, "sort")
    conditions = _where(dataset, where)
    last = _cursor(after, sort)
    with db.transaction() as session:
        if sort == "id":
            found = _rows(session, [*conditions, *([Flag.id > last[1]] if last else [])], [Flag.id], limit + 1)
        else:
            found = []
            if last is None or last[0] is not None:
                keyset = [tuple_(Flag.rank, Flag.id) > tuple_(*last)] if last else []
                found = _rows(session, [*conditions, Flag.rank.is_not(None), *keyset], [Flag.rank, Flag.id],
                              limit + 1)
            if len(found) <= limit:
                keyset = [Flag.id > last[1]] if last and last[0] is None else []
                found += _rows(session, [*conditions, Flag.rank.is_(None), *keyset], [Flag.id],
                               limit + 1 - len(found))
        total = None if after else _count(session, dataset, where, conditions)
    cursor = None
    if len(found) > limit:
        f = found[limit - 1][0]
        cursor = str(f.id) if sort == "id" else f"r{f.rank}.{f.id}" if f.rank is not None else f"u{f.id}"
    return FlagPage([_view(dataset, f, e, score) for f, e, score in found[:limit]], cursor, total)


def _cursor(after: str | None, sort: str) -> tuple[int | None, int] | None:
    """(rank, id) of a page cursor (rank None for an id cursor or an unranked flag's); None for the first page."""
    if not after:
        return None
    try:
        if sort == "id":
            return None, int(after)
        if after.startswith("u"):
            return None, int(after[1:])
        if after.startswith("r"):
            rank, flag_id = after[1:].split(".")
            return int(rank), int(flag_id)
    except ValueError:
        pass
    raise DatablameError(f"bad page cursor {after!r}", "start again from the first page")


def _count(session: Session, dataset: Dataset, where: FlagFilter, conditions: list) -> int:
    """How many flags match: from the flags' own index unless the filter reads the examples (label, text)."""
    query = _joined(select(func.count())) if where.label is not None or where.text else \
        select(func.count()).select_from(Flag)
    return int(session.scalar(query.where(*conditions)) or 0)


def _state(flag: Flag) -> dict:
    return {"status": flag.status, "reviewer_label": flag.reviewer_label, "note": flag.note, "who": flag.who,
            "version": flag.version}


def _record(session: Session, dataset: Dataset, batch: str, action: str, who: str, changes: list[tuple]) -> None:
    """Append one event per (flag id, before, after) to the review-event log."""
    if changes:
        now = utcnow()
        session.execute(insert(ReviewEvent), [
            {"dataset_id": dataset.id, "flag_id": i, "batch": batch, "action": action, "who": who, "at": now,
             "before": before, "after": after} for i, before, after in changes])


def _review(db: Database, dataset: Dataset, action: str, values: dict, ids: Sequence[int] | None = None,
            where: FlagFilter | None = None, expected: Mapping[int, int] | None = None) -> int:
    """Apply ``values`` (some of :data:`REVIEWED`) to the flags ``ids``, or to those matching ``where`` when the
    transaction runs; log one ``action`` event per flag (one batch); returns how many changed. All or nothing:
    an unknown id raises DatablameError, a flag whose version is not the ``expected`` one raises StaleFlag."""
    if ids is not None:
        ids = sorted(set(int(i) for i in ids))
        if not ids:
            raise DatablameError("no flag id given", "pass one or more ids from 'datablame flags WORKDIR list'")
    with db.transaction() as session:
        if ids is not None:
            found = _lock(session, dataset, ids)
        else:  # the rows that match when the transaction runs, locked by the same statement
            matching = _joined(select(Flag.id)).where(*_where(dataset, where or FlagFilter()))
            found = {f.id: f for f in session.execute(select(Flag).where(Flag.id.in_(matching)).order_by(Flag.id)
                                                      .with_for_update()).scalars()}
        if ids is not None and len(found) < len(ids):  # raising rolls the transaction back: all or nothing
            raise DatablameError(f"unknown flag id {', '.join(str(i) for i in ids if i not in found)}",
                                 "see the ids with 'datablame flags WORKDIR list'")
        _refuse_stale(session, dataset, found, expected or {})
        before = {i: _state(f) for i, f in found.items()}
        versions = _apply(session, sorted(found), values)
        _record(session, dataset, uuid.uuid4().hex, action, values["who"],
                [(i, before[i], before[i] | values | {"version": versions[i]}) for i in sorted(found)])
    return len(found)


CHUNK = 10_000
"""Ids per ``IN (…)`` list: under the bound parameters a statement may hold (PostgreSQL: 65,535)."""


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[i:i + CHUNK]) for i in range(0, len(ids), CHUNK)]


def _lock(session: Session, dataset: Dataset, ids: Sequence[int]) -> dict[int, Flag]:
    """{id: flag} of the dataset's flags ``ids`` (unknown ones left out), locked in id order first: one UPDATE of
    several rows locks them in whatever order it scans them, so two on PostgreSQL could deadlock (SQLite's BEGIN
    IMMEDIATE serializes writers already)."""
    return {f.id: f for chunk in _chunks(sorted(ids)) for f in session.execute(
        select(Flag).where(Flag.dataset_id == dataset.id, Flag.id.in_(chunk)).order_by(Flag.id)
        .with_for_update()).scalars()}


def _refuse_stale(session: Session, dataset: Dataset, found: Mapping[int, Flag], expected: Mapping[int, int]
                  ) -> None:
    """Raise StaleFlag, with their current state, for the flags whose version is not the ``expected`` one."""
    stale = [i for i, version in expected.items() if i in found and found[i].version != version]
    if stale:
        raise StaleFlag(_views(session, dataset, [Flag.id.in_(stale)], [Flag.id]))


def _apply(session: Session, ids: Sequence[int], values: dict) -> dict[int, int]:
    """Set ``values`` on the (locked) flags ``ids``, adding 1 to their versions in the same statement; returns
    {id: new version}."""
    versions: dict[int, int] = {}
    for chunk in _chunks(ids):
        versions.update(session.execute(
            update(Flag).where(Flag.id.in_(chunk)).values(**values, updated_at=utcnow(), version=Flag.version + 1)
            .returning(Flag.id, Flag.version).execution_options(synchronize_session=False)).all())
    return versions


ACTIONS = {"accepted": "accept", "rejected": "reject", "open": "reopen"}
UNDOABLE = (*ACTIONS.values(), "relabel")
"""The review actions :func:`undo` reverts (``add`` is not one: a new flag is rejected, not undone)."""


def set_status(db: Database, dataset: Dataset, ids: Sequence[int], status: str, who: str | None = None,
               expected: Mapping[int, int] | None = None) -> int:
    """Set the status of these flags (``accepted``, ``rejected``, or ``open`` again); returns how many were
    updated. An unknown id changes nothing and raises DatablameError; a flag changed since the reviewer saw
    version ``expected[id]`` changes nothing and raises StaleFlag."""
    check_choice("status", status, tuple(ACTIONS))
    return _review(db, dataset, ACTIONS[status], {"status": status, "who": _who(who)}, ids, expected=expected)


def set_status_matching(db: Database, dataset: Dataset, where: FlagFilter, status: str,
                        who: str | None = None) -> int:
    """Set the status of every flag that matches ``where`` when the update runs (e.g. accept all open flags
    whose suggested label is ``pos``), as one action; returns how many were updated."""
    check_choice("status", status, tuple(ACTIONS))
    return _review(db, dataset, ACTIONS[status], {"status": status, "who": _who(who)}, where=where)


def relabel(db: Database, dataset: Dataset, flag_id: int | Sequence[int], label: str, who: str | None = None,
            note: str | None = None, expected: Mapping[int, int] | None = None) -> int:
    """Mark flags ``relabeled`` with the reviewer's label (a label name of the dataset); returns how many."""
    values = {"status": "relabeled", "reviewer_label": label_index(dataset, label), "who": _who(who)}
    if note is not None:
        values["note"] = note
    ids = [flag_id] if isinstance(flag_id, int) else flag_id
    return _review(db, dataset, "relabel", values, ids, expected=expected)


def undo(db: Database, dataset: Dataset, who: str | None = None) -> list[int]:
    """Revert the reviewer's latest review action that is not undone yet (all the flags it changed together):
    their reviewed fields go back to what they were, as a new ``undo`` action in the log. Returns the flags'
    ids. Raises DatablameError when there is nothing to undo, and StaleFlag (changing nothing) when someone
    changed one of the flags since."""
    who = _who(who)
    with db.transaction() as session:
        latest = session.scalar(select(ReviewEvent.batch).where(
            ReviewEvent.dataset_id == dataset.id, ReviewEvent.who == who, ReviewEvent.undone_by.is_(None),
            ReviewEvent.action.in_(UNDOABLE)).order_by(ReviewEvent.id.desc()))
        if latest is None:
            raise DatablameError(f"{who or 'this reviewer'} has no review action left to undo",
                                 "undo reverts your own accept, reject, relabel and reopen actions")
        events = session.scalars(select(ReviewEvent).where(ReviewEvent.batch == latest)
                                 .order_by(ReviewEvent.flag_id)).all()
        ids = [e.flag_id for e in events]
        _refuse_stale(session, dataset, _lock(session, dataset, ids), {e.flag_id: e.after["version"] for e in events})
        restored = {e.flag_id: {k: e.before[k] for k in REVIEWED} for e in events}
        groups: dict[tuple, list[int]] = {}  # one UPDATE per distinct earlier state (a bulk action: one or few)
        for flag_id, state in restored.items():
            groups.setdefault(tuple(state.values()), []).append(flag_id)
        versions: dict[int, int] = {}
        for group in groups.values():
            versions.update(_apply(session, group, restored[group[0]]))
        batch = uuid.uuid4().hex
        session.execute(update(ReviewEvent).where(ReviewEvent.batch == latest).values(undone_by=batch)
                        .execution_options(synchronize_session=False))
        _record(session, dataset, batch, "undo", who,
                [(e.flag_id, e.after, restored[e.flag_id] | {"version": versions[e.flag_id]}) for e in events])
    return ids


def history(db: Database, dataset: Dataset, flag_id: int | None = None, limit: int = 100) -> list[EventView]:
    """The review-event log, newest first (of one flag, or of the whole dataset); labels by name."""

    def named(state: dict | None) -> dict | None:
        return None if state is None else state | {"reviewer_label": _name(dataset, state["reviewer_label"])}

    query = select(ReviewEvent).where(ReviewEvent.dataset_id == dataset.id).order_by(ReviewEvent.id.desc())
    if flag_id is not None:
        query = query.where(ReviewEvent.flag_id == int(flag_id))
    with db.transaction() as session:
        return [EventView(e.id, e.flag_id, e.batch, e.action, e.who, e.at, named(e.before), named(e.after),
                          e.undone_by) for e in session.scalars(query.limit(limit))]


def _who(who: str | None) -> str:
    return who if who is not None else default_reviewer()


def add_flag(db: Database, dataset: Dataset, example_id: int, kind: str, note: str = "", source: str = "user",
             suggested_label: str | None = None, who: str | None = None) -> int:
    """Flag an example (by id, its 0-based row); returns the new flag's id. One flag per example and kind."""
    check_choice("kind", kind, FLAG_KINDS, "--kind")
    check_choice("source", source, FLAG_SOURCES)
    suggested = None if suggested_label is None else label_index(dataset, suggested_label)
    who, now = _who(who), utcnow()
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
            flag_id = session.execute(insert(Flag).values(
                dataset_id=dataset.id, example_id=int(example_id), kind=kind, source=source, run_id=None,
                suggested_label=suggested, status="open", note=note, who=who,
                created_at=now, updated_at=now, version=1).returning(Flag.id)).scalar_one()
        except IntegrityError:
            raise DatablameError(f"example {example_id} was flagged {kind} at the same moment",
                                 "list the flags and review that one") from None
        _record(session, dataset, uuid.uuid4().hex, "add", who,
                [(flag_id, None, {"status": "open", "reviewer_label": None, "note": note, "who": who, "version": 1})])
        return flag_id


def flag_examples(db: Database, dataset: Dataset, example_ids: Sequence[int], kind: str, note: str = "",
                  source: str = "explain", who: str | None = None) -> list[int]:
    """Flag each example not yet flagged ``kind`` (e.g. the top supporters of a biased slice, from explain);
    returns the new flags' ids. Examples already flagged ``kind`` keep their flag and its review."""
    with db.transaction() as session:
        flagged = set(session.scalars(select(Flag.example_id).where(Flag.dataset_id == dataset.id,
                                                                    Flag.kind == kind)))
    return [add_flag(db, dataset, i, kind, note, source, who=who)
            for i in dict.fromkeys(int(x) for x in example_ids) if i not in flagged]
