"""Review actions: list, accept, reject, relabel, add; unknown ids and labels; two reviewer processes at once."""

import multiprocessing

import pytest
from store_helpers import dataset, db, make_examples, make_issues, store_url, url_of  # noqa: F401 (fixtures)

from datablame.influence.errors import DatablameError
from datablame.store import flags
from datablame.store.db import default_url, open_db
from datablame.store.scans import find_dataset, record_scan


@pytest.fixture
def scanned(db, dataset):
    record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.2)  # flags 1..4 on examples 0..3
    return dataset


def test_review_actions(db, scanned):
    listed = flags.list_flags(db, scanned)
    assert [(f.id, f.example_id, f.label, f.suggested_label, f.status) for f in listed] == [
        (1, 0, "neg", "pos", "open"), (2, 1, "pos", "neg", "open"), (3, 2, "neg", "pos", "open"),
        (4, 3, "pos", "neg", "open")]
    assert flags.set_status(db, scanned, [1, 2], "accepted", who="ann") == 2
    flags.set_status(db, scanned, [3], "rejected", who="bob")
    flags.relabel(db, scanned, 4, "pos", who="ann", note="sarcasm")
    new = flags.add_flag(db, scanned, 7, "biased", note="gendered", who="cy")
    by_id = {f.id: f for f in flags.list_flags(db, scanned)}
    assert [by_id[i].status for i in (1, 2, 3, 4)] == ["accepted", "accepted", "rejected", "relabeled"]
    assert (by_id[4].reviewer_label, by_id[4].note, by_id[4].who, by_id[4].version) == ("pos", "sarcasm", "ann", 2)
    assert (by_id[new].kind, by_id[new].source, by_id[new].status, by_id[new].who) == ("biased", "user", "open", "cy")
    assert [f.id for f in flags.list_flags(db, scanned, status="accepted")] == [1, 2]
    assert [f.id for f in flags.list_flags(db, scanned, kind="biased")] == [new]


@pytest.mark.parametrize("action, message", [
    (lambda db, d: flags.set_status(db, d, [1, 99], "accepted"), "unknown flag id 99"),
    (lambda db, d: flags.relabel(db, d, 1, "maybe"), "unknown label 'maybe'"),
    (lambda db, d: flags.add_flag(db, d, 500, "biased"), "unknown example id 500"),
    (lambda db, d: flags.add_flag(db, d, 0, "mislabeled"), "already flagged mislabeled"),
    (lambda db, d: flags.add_flag(db, d, 5, "funny"), "unknown kind 'funny'"),
    (lambda db, d: flags.list_flags(db, d, status="done"), "unknown status 'done'"),
])
def test_bad_input_changes_nothing(db, scanned, action, message):
    before = flags.list_flags(db, scanned)
    with pytest.raises(DatablameError, match=message):
        action(db, scanned)
    assert flags.list_flags(db, scanned) == before


ROUNDS = 25


def _reviewer(url, fingerprint, name, start, added):
    db = open_db(url)
    dataset = find_dataset(db, fingerprint)
    start.wait(60)
    for r in range(ROUNDS):
        # both reviewers update the same flags (1..4) every round, and race to flag the same examples
        flags.set_status(db, dataset, [1, 2, 3, 4], "accepted" if r % 2 else "rejected", who=name)
        flags.relabel(db, dataset, 1 + r % 4, "pos", who=name)
        try:
            added.put(flags.add_flag(db, dataset, 4 + r % 16, "other", note=f"{name} {r}"))
        except DatablameError as exc:
            # refused by the check, or (PostgreSQL: both checks passed at once) by the unique constraint
            assert "already flagged other" in str(exc) or "flagged other at the same moment" in str(exc)
    db.close()


def test_two_reviewer_processes_lose_no_update(db, scanned, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, added = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_reviewer,
                         args=(url_of(db), make_examples().fingerprint, name, start, added))
             for name in ("ann", "bob")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    listed = flags.list_flags(db, scanned)
    # every update counted: 4 flags × 1 initial version + 2 reviewers × ROUNDS × (4 status + 1 relabel)
    assert sum(f.version for f in listed if f.id <= 4) == 4 + 2 * ROUNDS * 5
    # every insert that succeeded is there, exactly one flag per example, the others refused as duplicates
    new = {f.id: f.example_id for f in listed if f.id > 4}
    assert sorted(new.values()) == list(range(4, 20))
    assert sorted(added.get(timeout=10) for _ in new) == sorted(new) and added.empty()
