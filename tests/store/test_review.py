"""The review loop's store side: stale writes refused, undo from the event log, the audit trail, bulk actions
by filter, keyset pages; on SQLite and on PostgreSQL (when a server can be started)."""

import pytest
from store_helpers import dataset, db, make_issues, store_url  # noqa: F401 (fixtures)

from datablame.influence.errors import DatablameError
from datablame.store import flags
from datablame.store.flags import FlagFilter
from datablame.store.scans import record_scan



@pytest.fixture
def scanned(db, dataset):
    record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.5)  # flags 1..10, most suspicious first
    return dataset


def states(db, dataset):
    return {f.id: (f.status, f.reviewer_label, f.who, f.version) for f in flags.list_flags(db, dataset)}


def test_a_stale_write_changes_nothing_and_returns_the_current_state(db, scanned):
    flags.set_status(db, scanned, [1], "rejected", who="bob", expected={1: 1})
    before = states(db, scanned)
    with pytest.raises(flags.StaleFlag) as stale:
        flags.set_status(db, scanned, [1, 2], "accepted", who="ann", expected={1: 1, 2: 1})
    assert [(f.id, f.status, f.who, f.version) for f in stale.value.current] == [(1, "rejected", "bob", 2)]
    with pytest.raises(flags.StaleFlag):
        flags.relabel(db, scanned, 1, "pos", who="ann", expected={1: 1})
    assert states(db, scanned) == before
    assert flags.set_status(db, scanned, [1, 2], "accepted", who="ann", expected={1: 2, 2: 1}) == 2


def test_undo_reverts_the_reviewers_latest_action_and_logs_it(db, scanned):
    start = states(db, scanned)
    flags.set_status(db, scanned, [1, 2, 3], "accepted", who="ann")
    flags.relabel(db, scanned, 4, "pos", who="ann", note="sarcasm")
    flags.set_status(db, scanned, [5], "rejected", who="bob")
    assert flags.undo(db, scanned, who="ann") == [4]
    now = states(db, scanned)
    assert now[4][:3] == start[4][:3] and now[4][3] == 3  # restored; the undo counts as an update
    assert now[5][0] == "rejected"  # bob's action is bob's
    assert flags.undo(db, scanned, who="ann") == [1, 2, 3]  # a bulk action is undone as a whole
    assert [states(db, scanned)[i][0] for i in (1, 2, 3)] == ["open"] * 3
    with pytest.raises(DatablameError, match="ann has no review action left to undo"):
        flags.undo(db, scanned, who="ann")
    log = flags.history(db, scanned, flag_id=4)
    assert [(e.action, e.who, e.before["status"], e.after["status"]) for e in log] == [
        ("undo", "ann", "relabeled", "open"), ("relabel", "ann", "open", "relabeled")]
    assert log[1].after["reviewer_label"] == "pos" and log[1].undone_by == log[0].batch


def test_undo_after_someone_else_changed_the_flag_is_refused(db, scanned):
    flags.set_status(db, scanned, [1], "accepted", who="ann")
    flags.set_status(db, scanned, [1], "rejected", who="bob")
    with pytest.raises(flags.StaleFlag, match="flag 1 changed since you saw it"):
        flags.undo(db, scanned, who="ann")
    assert states(db, scanned)[1][:3] == ("rejected", None, "bob")


def test_added_flags_are_logged_but_not_undone(db, scanned):
    new = flags.add_flag(db, scanned, 15, "biased", note="gendered", who="cy")
    assert [(e.flag_id, e.action, e.before) for e in flags.history(db, scanned)] == [(new, "add", None)]
    with pytest.raises(DatablameError, match="no review action left"):
        flags.undo(db, scanned, who="cy")


def test_bulk_action_by_filter_touches_only_the_matching_flags(db, scanned):
    flags.set_status(db, scanned, [1], "rejected", who="bob")
    everything = flags.list_flags(db, scanned)
    chosen = {f.id for f in everything if f.status == "open" and f.suggested_label == "pos"}
    assert flags.set_status_matching(db, scanned, FlagFilter(status="open", suggested="pos"), "accepted",
                                     who="ann") == len(chosen)
    after = states(db, scanned)
    assert {i for i, s in after.items() if s[0] == "accepted"} == chosen and after[1][0] == "rejected"
    assert flags.undo(db, scanned, who="ann") == sorted(chosen)


@pytest.mark.parametrize("sort", flags.SORTS)
@pytest.mark.parametrize("where", [FlagFilter(), FlagFilter(status="open"), FlagFilter(label="neg"),
                                   FlagFilter(text="sentence 1"), FlagFilter(kind="biased")])
def test_keyset_pages_walk_every_match_once_in_order(db, scanned, sort, where):
    flags.add_flag(db, scanned, 15, "biased", who="cy")  # no scan rank: last when sorted by suspicion
    flags.set_status(db, scanned, [2], "accepted", who="ann")
    full = flags.page_flags(db, scanned, where, sort, limit=1000)
    assert full.next is None and full.total == len(full.flags)
    walked, cursor = [], None
    while True:
        page = flags.page_flags(db, scanned, where, sort, cursor, limit=3)
        assert page.total == (full.total if cursor is None else None)  # counted on the first page
        walked += page.flags
        if page.next is None:
            break
        cursor = page.next
    assert [f.id for f in walked] == [f.id for f in full.flags]
    expected = [f for f in flags.list_flags(db, scanned)
                if (where.status is None or f.status == where.status) and (where.kind is None or f.kind == where.kind)
                and (where.label is None or f.label == where.label) and (where.text is None or where.text in f.text)]
    if sort == "id":
        assert [f.id for f in walked] == [f.id for f in expected]
    else:  # the scan's order: most suspicious first (its scores decrease), unscored flags last
        assert sorted(f.id for f in walked) == sorted(f.id for f in expected)
        scores = [f.score for f in walked]
        ranked = [s for s in scores if s is not None]
        assert ranked == sorted(ranked, reverse=True) and scores == ranked + [None] * (len(scores) - len(ranked))


@pytest.mark.parametrize("cursor", ["x", "r1", "u", "r1.x", "7"])
def test_a_bad_cursor_is_one_line(db, scanned, cursor):
    with pytest.raises(DatablameError, match="bad page cursor"):
        flags.page_flags(db, scanned, after=cursor)


def test_a_rescan_gives_reviewed_flags_their_new_ranks(db, scanned):
    flags.set_status(db, scanned, [1], "accepted", who="ann")  # kept by the rescan, at its example's new rank
    reversed_issues = make_issues()
    reversed_issues.order = reversed_issues.order[::-1].copy()
    record_scan(db, scanned.id, "combined", reversed_issues, flag_top=0.1)
    ranked = [f for f in flags.page_flags(db, scanned, limit=100).flags]
    first = flags.get_flags(db, scanned, [1])[0]
    assert ranked[-1].id == first.id and first.status == "accepted"  # example 0 is ranked last now
