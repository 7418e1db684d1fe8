"""Datasets and scan runs in the store: registering a training set, recording a scan (what
:func:`.scanning.scan_workdir` computed).

One run per (dataset, method). Recording a scan is one transaction: the run's scores are replaced, its open
``mislabeled`` flags are replaced by flags on the new top fraction, and reviewed flags are kept; an example
already flagged ``mislabeled`` (by any source or run) is not flagged twice. A failure anywhere leaves the
previous state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from datablame.influence.errors import DatablameError

from .db import Database
from .schema import Dataset, Example, Flag, Run, Score, utcnow

if TYPE_CHECKING:  # importing them loads torch, which the review commands never need
    from datablame.influence.data import Examples
    from datablame.influence.detect import LabelIssues


@dataclass
class ScanRecord:
    """What a recorded scan wrote: its run id, the number of scores, and the open flags it holds."""

    run_id: int
    scores: int
    flagged: int


def ensure_dataset(db: Database, examples: Examples) -> int:
    """The id of the dataset with ``examples``' fingerprint, registering it (and its examples) if new."""
    with db.transaction() as session:
        found = session.scalar(select(Dataset.id).where(Dataset.fingerprint == examples.fingerprint))
        if found is not None:
            return found
        dataset = Dataset(path=examples.path, fingerprint=examples.fingerprint,
                          text_columns=list(examples.text_columns), label_column=examples.label_column,
                          label_names=list(examples.label_names))
        session.add(dataset)
        session.flush()
        rows = [{"dataset_id": dataset.id, "id": int(i), "label": int(y),
                 "text": t[0] if isinstance(t, tuple) else t, "text_pair": t[1] if isinstance(t, tuple) else None}
                for i, t, y in zip(examples.ids, examples.texts, examples.labels)]
        session.execute(insert(Example), rows)
        return dataset.id


def find_dataset(db: Database, fingerprint: str) -> Dataset:
    """The registered dataset with this fingerprint."""
    with db.transaction() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.fingerprint == fingerprint))
    if dataset is None:
        raise DatablameError("this workdir's data has no scan or flag in the store yet",
                             "run 'datablame scan WORKDIR' first (with the same --db)")
    return dataset


def record_scan(db: Database, dataset_id: int, method: str, issues: LabelIssues,
                self_influence: np.ndarray | None = None, flag_top: float = 0.05,
                parameters: dict[str, Any] | None = None, checkpoints: list[Any] | None = None) -> ScanRecord:
    """Store a scan's ranking and flag its top ``flag_top`` fraction (rounded up) as open ``mislabeled`` flags.

    issues: the ranking of the dataset's examples, by position = example id; self_influence: (n,) to store
    beside the scores (the method's own, when it has one).
    """
    if not 0.0 <= flag_top <= 1.0:
        raise DatablameError(f"--flag-top {flag_top} is not a fraction", "give a number from 0 to 1, e.g. 0.05")
    n = len(issues.score)
    with db.transaction() as session:
        examples = session.scalar(select(func.count()).select_from(Example).where(Example.dataset_id == dataset_id))
        if examples != n:
            raise DatablameError(f"the scan ranks {n} examples but the dataset has {examples}",
                                 "rescan from the workdir whose data is stored")
        run = session.scalar(select(Run).where(Run.dataset_id == dataset_id, Run.method == method))
        if run is None:
            run = Run(dataset_id=dataset_id, method=method)
            session.add(run)
        run.parameters, run.checkpoints, run.created_at = parameters or {}, checkpoints or [], utcnow()
        session.flush()
        _replace_scores(session, dataset_id, run.id, issues, self_influence)
        flagged = _replace_flags(session, dataset_id, run.id, issues, math.ceil(flag_top * n))
        return ScanRecord(run.id, n, flagged)


def _ranks(issues: LabelIssues) -> np.ndarray:
    """(n,) each example's rank in the scan (0: the most suspicious)."""
    rank = np.empty(len(issues.order), dtype=np.int64)
    rank[issues.order] = np.arange(len(issues.order))
    return rank


def _replace_scores(session: Session, dataset_id: int, run_id: int, issues: LabelIssues,
                    self_influence: np.ndarray | None) -> None:
    session.execute(delete(Score).where(Score.run_id == run_id))
    rank = _ranks(issues)
    session.execute(insert(Score), [
        {"run_id": run_id, "dataset_id": dataset_id, "example_id": i, "rank": int(rank[i]),
         "score": float(issues.score[i]), "suggested_label": int(issues.suggested[i]),
         "label_probability": float(issues.label_probability[i]),
         "self_influence": None if self_influence is None else float(self_influence[i])}
        for i in range(len(issues.order))])


def _replace_flags(session: Session, dataset_id: int, run_id: int, issues: LabelIssues, top: int) -> int:
    """Drop the run's open scan flags, give its other flags their examples' new ranks, flag its top ``top``
    examples not already flagged mislabeled; returns how many open flags the run now holds."""
    session.execute(delete(Flag).where(Flag.run_id == run_id, Flag.source == "scan", Flag.status == "open"))
    session.execute(update(Flag).where(Flag.run_id == run_id).values(rank=select(Score.rank).where(
        Score.run_id == Flag.run_id, Score.example_id == Flag.example_id).scalar_subquery()))
    rank = _ranks(issues)
    taken = set(session.scalars(select(Flag.example_id).where(Flag.dataset_id == dataset_id,
                                                              Flag.kind == "mislabeled")))
    fresh = [int(i) for i in issues.order[:top] if int(i) not in taken]
    now = utcnow()
    if fresh:
        session.execute(insert(Flag), [
            {"dataset_id": dataset_id, "example_id": i, "kind": "mislabeled", "source": "scan", "run_id": run_id,
             "rank": int(rank[i]), "suggested_label": int(issues.suggested[i]), "status": "open", "note": "", "who": "",
             "created_at": now, "updated_at": now, "version": 1} for i in fresh])
    return len(fresh)
