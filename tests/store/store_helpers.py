"""Store test helpers: a small in-memory dataset, a scan ranking made from arrays, and the fixtures ``db`` (a fresh
SQLite store in a temporary folder), ``dataset`` (the small dataset registered in it) and ``postgres_url`` (a
throwaway PostgreSQL server), imported by the tests."""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from datablame.influence.data import Examples
from datablame.influence.detect import rank_label_issues
from datablame.store.db import default_url, open_db
from datablame.store.scans import ensure_dataset, find_dataset

LABELS = ["neg", "pos"]


def make_examples(n: int = 20) -> Examples:
    return Examples(texts=[f"sentence {i}" for i in range(n)], labels=np.arange(n) % 2, label_names=LABELS,
                    path="/data/train.csv", fingerprint=f"fp-{n}")


def make_issues(n: int = 20):
    """A ranking whose model believes the opposite label for rows 0..3 (most suspicious: row 0)."""
    labels = np.arange(n) % 2
    p_given = np.linspace(0.95, 0.6, n)
    p_given[:4] = [0.01, 0.02, 0.03, 0.04]
    probs = np.zeros((n, 2))
    probs[np.arange(n), labels] = p_given
    probs[np.arange(n), 1 - labels] = 1 - p_given
    return rank_label_issues(labels, probs)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The URL of a fresh store: an SQLite file in a temporary folder, or a new database on a throwaway
    PostgreSQL server (skipped, with the reason, where none can be started)."""
    return default_url(tmp_path) if request.param == "sqlite" else \
        fresh_postgres_database(request.getfixturevalue("postgres_url"))


def url_of(db) -> str:
    """The URL another process opens ``db`` with."""
    return db.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def db(store_url):
    """A fresh store at ``store_url``."""
    database = open_db(store_url)
    yield database
    database.close()


@pytest.fixture
def dataset(db):
    ensure_dataset(db, make_examples())
    return find_dataset(db, make_examples().fingerprint)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (one per test module) in a temporary folder, reached through its Unix socket there (so it needs no
    free TCP port), stopped and deleted afterwards. Skipped without psycopg, without PostgreSQL's initdb, or as
    root (whom initdb refuses) without a ``postgres`` user and runuser to run it as."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))  # Debian keeps them off the PATH
    initdb = shutil.which("initdb") or (found[-1] if found else None)
    if initdb is None:
        pytest.skip("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    folder = tempfile.mkdtemp(prefix="datablame-pg-")
    as_user = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("initdb refuses root and there is no postgres user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("initdb refuses root and runuser (util-linux) is missing to run it as postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, pg_ctl = f"{folder}/data", str(Path(initdb).with_name("pg_ctl"))
    subprocess.run([*as_user, initdb, "-D", data, "--auth=trust", "-U", "datablame", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-l", f"{folder}/log", "-w", "-t", "60", "-o",
                    f"-k {folder} -c listen_addresses='' -c fsync=off", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://datablame@/postgres?host={folder}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_postgres_database(url: str) -> str:
    """The URL of a new, empty database on the server of ``url``."""
    import uuid

    import sqlalchemy

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.replace("/postgres?", f"/{name}?")
