"""Store test helpers: a small in-memory dataset, a scan ranking made from arrays, and the fixtures ``db`` (a fresh
SQLite store in a temporary folder) and ``dataset`` (the small dataset registered in it), imported by the tests."""

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


@pytest.fixture
def db(tmp_path):
    database = open_db(default_url(tmp_path))
    yield database
    database.close()


@pytest.fixture
def dataset(db):
    ensure_dataset(db, make_examples())
    return find_dataset(db, make_examples().fingerprint)
