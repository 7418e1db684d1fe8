"""Shared fixtures: small labelled data written to disk and a tiny BERT built from a config (no downloads)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# anyio loads its file module lazily, and as a pytest plugin it has its modules rewritten on import; Starlette's test
# client first serves a file in a worker thread, where CPython 3.11.7's compile() failed once in CI with
# "AST constructor recursion depth mismatch". Load it here, in the main thread.
import anyio._core._fileio  # noqa: E402,F401

WORDS = {
    "sports": ["goal", "match", "team", "score", "coach", "league", "win", "player"],
    "food": ["pasta", "soup", "bread", "spicy", "sweet", "dinner", "recipe", "bake"],
    "tech": ["laptop", "code", "phone", "battery", "software", "chip", "screen", "app"],
}
FILLER = ["the", "a", "was", "very", "really", "today", "and", "my", "new", "great"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """n short sentences, labels cycling through sports / food / tech, each with two topic words."""
    rng = random.Random(seed)
    labels = list(WORDS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(WORDS[label], 2) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def build_tiny_bert(folder: Path, num_labels: int = 3, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised BERT (hidden 32, 2 layers) over the test vocabulary."""
    from datablame.influence.toy import build_small_bert

    words = [w for ws in WORDS.values() for w in ws] + FILLER
    return build_small_bert(folder, words, num_labels, layers=layers, hidden=hidden, seed=seed, max_positions=64)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", make_rows(48))


@pytest.fixture(scope="session")
def tiny_examples(tiny_csv):
    from datablame.influence.data import load_examples

    return load_examples(tiny_csv)


@pytest.fixture(scope="session")
def trained_workdir(tiny_bert, tiny_examples, tmp_path_factory):
    """A workdir with 3 checkpoints of the tiny BERT trained for 10 epochs on the 48 tiny examples (training
    accuracy 0.48, 0.81, 1.0 at the checkpoints)."""
    from datablame.influence.train import TrainSettings, train

    wd = tmp_path_factory.mktemp("workdir")
    train(tiny_examples, str(tiny_bert), wd, TrainSettings(epochs=10, lr=5e-3, batch_size=8, checkpoints=3,
                                                          device="cpu"))
    return wd


@pytest.fixture(scope="session")
def frozen_workdir(trained_workdir, tiny_examples, tmp_path_factory):
    """A head trained 6 epochs on a frozen encoder that tells the classes apart (the trained tiny BERT's last
    checkpoint, copied as the base model), with TracIn indexes (head gradients, both scorings)."""
    import shutil

    from datablame.index.explain import index_workdir
    from datablame.influence.build import MethodSettings
    from datablame.influence.train import TrainSettings, train

    root = tmp_path_factory.mktemp("frozen-head")
    shutil.copytree(trained_workdir / "checkpoints" / "ck-002", root / "base")
    train(tiny_examples, str(root / "base"), root / "wd", TrainSettings(
        epochs=6, lr=5e-2, batch_size=8, checkpoints=2, device="cpu", freeze_encoder=True, seed=3))
    index_workdir(root / "wd", "tracin", MethodSettings(params=["head"], device="cpu"))
    return root / "wd"


@pytest.fixture(scope="session")
def trained(trained_workdir, tiny_examples):
    """(models, learning rates, task) of the trained tiny BERT's checkpoints, in order."""
    from datablame.influence.models import load_classifier
    from datablame.influence.workdir import Workdir

    wd = Workdir(trained_workdir)
    cfg = wd.load()
    loaded = [load_classifier(wd.checkpoint_path(c), cfg.label_names, "cpu") for c in cfg.checkpoints]
    return [m for m, _ in loaded], [c.learning_rate for c in cfg.checkpoints], loaded[-1][1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server for the whole session (:func:`datablame.store.testing.temporary_postgres`;
    each test makes its own database on it); skipped, with the reason, where none can be started."""
    from datablame.store.testing import PostgresUnavailable, temporary_postgres

    try:
        with temporary_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
