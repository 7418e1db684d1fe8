"""Hostile stores through the console script: a WORKDIR/datablame.db that is not SQLite, a read-only store, a
store from a newer datablame give one line ``error: …`` and exit status 2; a read-only store still serves
``flags list`` and ``report``; eight reviewer processes at once lose no update."""

import json
import os
import sqlite3
import subprocess
import sys
import urllib.parse
from collections import Counter

import pytest
from test_cli import ENV, datablame

from datablame.store import flags
from datablame.store.db import default_url, head_revision, open_db
from datablame.store.scans import ensure_dataset, find_dataset


@pytest.fixture
def workdir(tiny_examples, tmp_path):
    """A workdir on the tiny data (no checkpoint: the store commands do not need one) whose store holds four open
    flags, ids 1..4 on examples 0..3."""
    from datablame.influence.workdir import Config, Workdir

    wd = tmp_path / "wd"
    wd.mkdir()
    Workdir(wd).save(Config(data_path=tiny_examples.path, data_fingerprint=tiny_examples.fingerprint,
                            text_columns=list(tiny_examples.text_columns), label_column=tiny_examples.label_column,
                            label_names=list(tiny_examples.label_names)))
    db = open_db(default_url(wd))
    ensure_dataset(db, tiny_examples)
    dataset = find_dataset(db, tiny_examples.fingerprint)
    assert [flags.add_flag(db, dataset, i, "mislabeled", suggested_label="food") for i in range(4)] == [1, 2, 3, 4]
    db.close()
    return wd


def one_line_error(r) -> str:
    """The single line of a user error (exit status 2, no traceback)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    return lines[0]


def flag_states(wd) -> dict:
    """Each flag's (status, version), read through the library."""
    fingerprint = json.loads((wd / "config.json").read_text())["data_fingerprint"]
    db = open_db(default_url(wd), write=False)
    try:
        return {f.id: (f.status, f.version) for f in flags.list_flags(db, find_dataset(db, fingerprint))}
    finally:
        db.close()


def test_a_store_file_that_is_not_sqlite_is_one_line(workdir):
    store = workdir / "datablame.db"
    for content, args in [(os.urandom(4096), ["flags", workdir, "list"]),
                          (b"this is not a database\n" * 200, ["flags", workdir, "accept", "1"]),
                          (b"\x00" * 100 + b"garbage" * 300, ["report", workdir])]:
        store.write_bytes(content)
        assert one_line_error(datablame(*args)) == (
            f"error: {store} is not a datablame store (file is not a database) (move it aside to start a new store "
            "there, or pass --db to use another one)")
        assert store.read_bytes() == content


def test_a_read_only_store_serves_list_and_report_and_refuses_writes(workdir, tmp_path):
    store = workdir / "datablame.db"
    url = f"sqlite:///file:{urllib.parse.quote(str(store))}?mode=ro&uri=true"
    listed = json.loads(datablame("flags", workdir, "list", "--json", "--db", url).stdout)
    assert [(f["id"], f["status"]) for f in listed] == [(1, "open"), (2, "open"), (3, "open"), (4, "open")]
    r = datablame("report", workdir, "--db", url, "--out", tmp_path / "report.html")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.html").read_text().count("mislabeled") >= 4
    for args in [["flags", workdir, "accept", "1", "2"], ["flags", workdir, "reject", "3"],
                 ["flags", workdir, "relabel", "4", "--label", "tech"],
                 ["flags", workdir, "add", "9", "--kind", "biased"], ["scan", workdir, "--device", "cpu"]]:
        assert one_line_error(datablame(*args, "--db", url)).startswith(
            f"error: the store {store} is read-only (the --db URL opens it read-only (mode=ro); drop mode=ro")
    assert flag_states(workdir) == {i: ("open", 1) for i in (1, 2, 3, 4)}


def test_a_store_from_a_newer_datablame_is_refused_with_both_revisions(workdir):
    with sqlite3.connect(workdir / "datablame.db") as conn:
        conn.execute("update alembic_version set version_num = '0042'")
    for args in [["flags", workdir, "list"], ["report", workdir]]:
        assert one_line_error(datablame(*args)) == (
            f"error: the store {workdir / 'datablame.db'} is at schema revision '0042', from a newer datablame (the "
            f"newest this one knows is '{head_revision()}') (upgrade datablame (pip install -U datablame), or pass "
            "--db to use another store)")


def test_eight_reviewer_processes_at_once_lose_no_update(workdir):
    exe = os.path.join(os.path.dirname(sys.executable), "datablame")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "datablame.cli"]
    reviews = [["accept", "1", "2", "3", "4"], ["reject", "1", "2", "3", "4"], ["relabel", "1", "--label", "tech"],
               ["relabel", "2", "--label", "tech"], ["accept", "3", "4"], ["reject", "1", "4"],
               ["relabel", "3", "--label", "sports"], ["accept", "1", "2"]]
    procs = [subprocess.Popen([*cmd, "flags", str(workdir), *args, "--who", f"r{i}"], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i, args in enumerate(reviews)]
    outcomes = [(p.communicate(timeout=120)[1], p.returncode) for p in procs]
    assert [code for _, code in outcomes] == [0] * len(reviews), outcomes
    changes = Counter(int(a) for args in reviews for a in args[1:] if a.isdigit())
    states = flag_states(workdir)
    # a flag's version is 1 (created) + one per change; each ends with the status of one review action
    assert {i: version for i, (_, version) in states.items()} == {i: 1 + changes[i] for i in (1, 2, 3, 4)}
    assert all(status in ("accepted", "rejected", "relabeled") for status, _ in states.values())
