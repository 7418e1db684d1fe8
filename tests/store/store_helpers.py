"""Store test helpers: a small in-memory dataset, a scan ranking made from arrays, and the fixtures ``db`` (a fresh
SQLite store in a temporary folder), ``store_url`` (a fresh SQLite or PostgreSQL store; the server is conftest's
``postgres_url``) and ``dataset`` (the small dataset registered in it), imported by the tests."""

import numpy as np
import pytest

from datablame.influence.data import Examples
from datablame.influence.detect import rank_label_issues
from datablame.store.db import default_url, open_db
from datablame.store.scans import ensure_dataset, find_dataset
from datablame.store.testing import new_database

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
        new_database(request.getfixturevalue("postgres_url"))


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
