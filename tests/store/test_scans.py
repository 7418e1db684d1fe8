"""Recording scans: re-running replaces the run's rows (nothing duplicated, reviews kept); a crash mid-write
leaves the previous state."""

import multiprocessing
import os

import numpy as np
import pytest
from sqlalchemy import func, select
from store_helpers import dataset, db, make_issues, store_url, url_of  # noqa: F401 (fixtures)

from datablame.influence.detect import rank_label_issues
from datablame.influence.errors import DatablameError
from datablame.store import scans
from datablame.store.db import default_url, open_db
from datablame.store.flags import set_status
from datablame.store.schema import Flag, Run, Score


def counts(db):
    with db.transaction() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Run, Score, Flag))


def snapshot(db):
    with db.transaction() as s:
        return (sorted(s.execute(select(Score.example_id, Score.rank, Score.score)).all()),
                sorted(s.execute(select(Flag.example_id, Flag.status)).all()))


def test_scan_stores_scores_and_flags_top_fraction(db, dataset):
    issues = make_issues()
    record = scans.record_scan(db, dataset.id, "combined", issues, flag_top=0.2)
    assert (record.scores, record.flagged) == (20, 4)
    with db.transaction() as s:
        flagged = s.execute(select(Flag.example_id, Flag.suggested_label, Flag.status, Flag.kind)).all()
        assert sorted(flagged) == [(i, 1 - i % 2, "open", "mislabeled") for i in range(4)]
        assert s.scalar(select(Score.rank).where(Score.example_id == 0)) == 0


def test_rescan_replaces_without_duplicates_and_keeps_reviews(db, dataset):
    scans.record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.2)
    first_flag = min(f.id for f in _flags(db))
    set_status(db, dataset, [first_flag], "rejected", who="ann")
    scans.record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.2)
    assert counts(db) == (1, 20, 4)
    assert {(f.example_id, f.status) for f in _flags(db)} == {(0, "rejected"), (1, "open"), (2, "open"),
                                                               (3, "open")}
    # a second method: its own run and scores; examples already flagged mislabeled are not flagged again
    scans.record_scan(db, dataset.id, "tracin", make_issues(), flag_top=0.25)
    assert counts(db) == (2, 40, 5)


def _flags(db):
    with db.transaction() as s:
        return s.scalars(select(Flag)).all()


def test_wrong_size_or_fraction_is_refused(db, dataset):
    with pytest.raises(DatablameError, match="ranks 5 examples"):
        scans.record_scan(db, dataset.id, "m", rank_label_issues(np.zeros(5, int), np.full((5, 2), 0.5)))
    with pytest.raises(DatablameError, match="not a fraction"):
        scans.record_scan(db, dataset.id, "m", make_issues(), flag_top=1.5)
    assert counts(db) == (0, 0, 0)


def test_failure_mid_write_rolls_back(db, dataset, monkeypatch):
    scans.record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.1)
    before = snapshot(db)

    def boom(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(scans, "_replace_flags", boom)  # scores already replaced when it fails
    reversed_issues = rank_label_issues(np.arange(20) % 2, np.full((20, 2), 0.5))
    with pytest.raises(RuntimeError):
        scans.record_scan(db, dataset.id, "combined", reversed_issues, flag_top=0.5)
    assert snapshot(db) == before


def _crash_mid_write(url, dataset_id):
    db = open_db(url)

    def die(*args):
        os._exit(3)  # a killed process: no exception handler, no rollback, no close

    scans._replace_flags = die
    scans.record_scan(db, dataset_id, "combined", rank_label_issues(np.arange(20) % 2, np.full((20, 2), 0.5)))


def test_killed_process_mid_write_leaves_previous_state(db, dataset, tmp_path):
    scans.record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.1)
    before = snapshot(db)
    child = multiprocessing.get_context("spawn").Process(target=_crash_mid_write,
                                                         args=(url_of(db), dataset.id))
    child.start()
    child.join(60)
    assert child.exitcode == 3
    assert snapshot(db) == before
