"""Hostile stores: a file that is not SQLite, another program's database, a schema from a newer datablame, a
read-only store (by URL and by permissions), and eight reviewer processes changing the same flags at once."""

import multiprocessing
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datablame.store.testing import new_database

from datablame.influence.data import Examples
from datablame.influence.errors import DatablameError
from datablame.store import flags
from datablame.store.db import current_revision, default_url, head_revision, make_engine, migrate, open_db
from datablame.store.scans import ensure_dataset, find_dataset

FINGERPRINT = "fp-robust"
FLAGGED = [1, 2, 3, 4]


def make_store(folder):
    """A store in ``folder``, filled by :func:`fill_store`; returns its file."""
    folder.mkdir(exist_ok=True)
    fill_store(default_url(folder))
    return folder / "datablame.db"


def fill_store(url):
    """Give the store at ``url`` 20 examples (labels neg/pos) and four open flags, ids 1..4 on examples 0..3."""
    db = open_db(url)
    ensure_dataset(db, Examples(texts=[f"sentence {i}" for i in range(20)], labels=np.arange(20) % 2,
                                label_names=["neg", "pos"], path="/data/train.csv", fingerprint=FINGERPRINT))
    dataset = find_dataset(db, FINGERPRINT)
    assert [flags.add_flag(db, dataset, i, "mislabeled", suggested_label="pos") for i in range(4)] == FLAGGED
    db.close()


def read_only_url(path) -> str:
    return f"sqlite:///file:{urllib.parse.quote(str(path))}?mode=ro&uri=true"


def statuses(url, write=True):
    db = open_db(url, write=write)
    try:
        return {f.id: (f.status, f.version) for f in flags.list_flags(db, find_dataset(db, FINGERPRINT))}
    finally:
        db.close()


@pytest.mark.parametrize("content", [os.urandom(4096), b"id,text,label\n0,hello,pos\n" * 50])
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path, content):
    (tmp_path / "datablame.db").write_bytes(content)
    for write in (True, False):
        with pytest.raises(DatablameError) as e:
            open_db(default_url(tmp_path), write=write)
        assert str(e.value) == (f"{tmp_path / 'datablame.db'} is not a datablame store (file is not a database) "
                                "(move it aside to start a new store there, or pass --db to use another one)")
    assert (tmp_path / "datablame.db").read_bytes() == content


def test_another_programs_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table customers (id integer primary key, name text)")
    with pytest.raises(DatablameError, match=r"other\.db is a database but not a datablame store \(it has tables "
                                             r"customers and no schema revision\)"):
        open_db(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")] == ["customers"]


def test_a_store_from_a_newer_datablame_is_refused_with_both_revisions(tmp_path):
    make_store(tmp_path)
    with sqlite3.connect(tmp_path / "datablame.db") as conn:
        conn.execute("update alembic_version set version_num = '0099_future'")
    for url, write in [(default_url(tmp_path), True), (default_url(tmp_path), False),
                       (read_only_url(tmp_path / "datablame.db"), False)]:
        with pytest.raises(DatablameError) as e:
            open_db(url, write=write)
        assert str(e.value) == (f"the store {tmp_path / 'datablame.db'} is at schema revision '0099_future', from a "
                                f"newer datablame (the newest this one knows is '{head_revision()}') (upgrade "
                                "datablame (pip install -U datablame), or pass --db to use another store)")
    assert current_revision(make_engine(default_url(tmp_path))) == "0099_future"  # not downgraded or touched


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_read_only_url_serves_reads_and_refuses_writes(tmp_path, journal):
    path = make_store(tmp_path)
    with sqlite3.connect(path) as conn:  # "delete": e.g. a copy made by a tool that leaves WAL mode
        assert conn.execute(f"pragma journal_mode = {journal}").fetchone() == (journal,)
    url = read_only_url(path)
    with pytest.raises(DatablameError, match=r"^the store .*datablame\.db is read-only \(the --db URL opens it "
                                             r"read-only \(mode=ro\); drop mode=ro"):
        open_db(url)  # a writer is refused before it starts
    db = open_db(url, write=False)
    assert db.read_only and db.path == path
    dataset = find_dataset(db, FINGERPRINT)
    assert [f.status for f in flags.list_flags(db, dataset)] == ["open"] * 4
    # a write through a store opened for reading is refused by SQLite, and reported in one line
    for write in (lambda: flags.set_status(db, dataset, [1], "accepted"),
                  lambda: flags.relabel(db, dataset, 2, "neg"),
                  lambda: flags.add_flag(db, dataset, 9, "biased")):
        with pytest.raises(DatablameError, match=r"^the store .*datablame\.db is read-only \(the --db URL"):
            write()
    db.close()
    assert statuses(default_url(tmp_path)) == {i: ("open", 1) for i in FLAGGED}


def test_a_read_only_store_at_an_older_revision_is_refused_not_migrated(tmp_path):
    engine = make_engine(default_url(tmp_path))
    migrate(engine, "0001")
    engine.dispose()
    with pytest.raises(DatablameError, match=r"is read-only and at schema revision 0001, older than this "
                                             r"datablame's 0004 \(open it once with write access"):
        open_db(read_only_url(tmp_path / "datablame.db"), write=False)
    assert current_revision(make_engine(default_url(tmp_path))) == "0001"


def _unprivileged(fn, conn):
    """Run ``fn`` as user nobody when this process is root (root writes whatever the file modes say); send back
    its result or its error."""
    try:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        conn.send(("ok", fn()))
    except Exception as exc:  # sent back to the test, which shows it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def run_unprivileged(fn):
    ctx = multiprocessing.get_context("fork")  # the child needs no import: as nobody it could not read them
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_unprivileged, args=(fn, child))
    proc.start()
    result = parent.recv()
    proc.join(30)
    return result


@pytest.fixture
def open_folder():
    """A temporary folder user nobody can reach (pytest's own are private to their owner)."""
    folder = tempfile.mkdtemp(prefix="datablame-robust-")
    os.chmod(folder, 0o755)
    yield Path(folder)
    for sub in Path(folder).iterdir():
        sub.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize("file_mode, folder_mode, reason", [
    (0o444, 0o777, "the file is not writable; make it writable (chmod u+w {path})"),
    (0o666, 0o555, "its folder is not writable, and SQLite keeps its -wal and -shm files beside the store"),
    (0o444, 0o555, "the file is not writable"),
])
def test_a_store_this_user_cannot_write_serves_reads_and_refuses_writes(open_folder, file_mode, folder_mode,
                                                                         reason):
    statuses(read_only_url(make_store(open_folder / "warm")), write=False)  # load every module the child needs
    folder = open_folder / "store"
    path = make_store(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["datablame.db"]  # no -wal left: a clean, closed store
    path.chmod(file_mode)
    folder.chmod(folder_mode)
    assert run_unprivileged(lambda: statuses(default_url(folder), write=False)) == (
        "ok", {i: ("open", 1) for i in FLAGGED})
    kind, message = run_unprivileged(lambda: statuses(default_url(folder)))
    assert kind == "error" and message.startswith(
        f"DatablameError: the store {path} is read-only ({reason.format(path=path)}"), message


REVIEWERS, ROUNDS = 8, 10


def _review(url, name, index, start, done):
    """One reviewer: every round, accept or reject all four flags, then relabel one; reports what it changed."""
    db = open_db(url)
    dataset = find_dataset(db, FINGERPRINT)
    changed = Counter()
    start.wait(60)
    for r in range(ROUNDS):
        assert flags.set_status(db, dataset, FLAGGED, "accepted" if (r + index) % 2 else "rejected", who=name) == 4
        changed.update(FLAGGED)
        flags.relabel(db, dataset, FLAGGED[(r + index) % 4], "neg", who=name, note=f"{name} round {r}")
        changed[FLAGGED[(r + index) % 4]] += 1
    db.close()
    done.put(dict(changed))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_eight_reviewer_processes_lose_no_update(tmp_path, request, database):
    url = default_url(tmp_path) if database == "sqlite" else new_database(request.getfixturevalue("postgres_url"))
    fill_store(url)
    ctx = multiprocessing.get_context("fork")  # the store is closed: no connection is shared with the children
    start, done = ctx.Event(), ctx.Queue()
    names = [f"reviewer{i}" for i in range(REVIEWERS)]
    procs = [ctx.Process(target=_review, args=(url, name, i, start, done))
             for i, name in enumerate(names)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)  # what each puts on the queue is small enough to sit in the pipe until read
    assert [p.exitcode for p in procs] == [0] * REVIEWERS
    changed = Counter()
    for _ in procs:
        changed.update(done.get(timeout=10))
    db = open_db(url, write=False)
    final = flags.list_flags(db, find_dataset(db, FINGERPRINT))
    db.close()
    # every change counted: a flag's version is 1 (created) + the changes made to it (5 a round per reviewer)
    assert {f.id: f.version for f in final} == {i: 1 + changed[i] for i in FLAGGED}
    assert sum(changed.values()) == REVIEWERS * ROUNDS * 5
    # one final decision per flag, all of it by one reviewer
    assert [f.id for f in final] == FLAGGED
    for f in final:
        assert f.status in ("accepted", "rejected", "relabeled") and f.who in names
        if f.status == "relabeled":  # status, who and note were written by one statement
            assert f.note.startswith(f"{f.who} round")
