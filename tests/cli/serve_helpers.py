"""Fixtures of the ``datablame serve`` tests, imported by them: ``review_workdir`` (a head trained on a frozen tiny
BERT over data with two hostile texts, TracIn-indexed, scanned: open flags, the hostile examples among them) and
``review_copy`` (a fresh copy of it per test, store included)."""

import shutil

import pytest
from conftest import make_rows, write_csv

SCRIPT = "<script>alert('pwned')</script> pasta soup"
IMG = '"><img src=x onerror="alert(1)"> goal match'
HOSTILE = {48: SCRIPT, 49: IMG}


@pytest.fixture(scope="session")
def review_workdir(trained_workdir, tmp_path_factory):
    from datablame.index.explain import index_workdir
    from datablame.influence.build import MethodSettings
    from datablame.influence.data import load_examples
    from datablame.influence.train import TrainSettings, train
    from datablame.store.db import default_url, open_db
    from datablame.store.flags import add_flag, list_flags
    from datablame.store.scanning import scan_workdir
    from datablame.store.scans import find_dataset

    root = tmp_path_factory.mktemp("review")
    rows = make_rows(48) + [{"text": SCRIPT, "label": "food"}, {"text": IMG, "label": "sports"}]
    data = write_csv(root / "train.csv", rows)
    shutil.copytree(trained_workdir / "checkpoints" / "ck-002", root / "base")
    examples = load_examples(data)
    train(examples, str(root / "base"), root / "wd", TrainSettings(
        epochs=6, lr=5e-2, batch_size=8, checkpoints=2, device="cpu", freeze_encoder=True, seed=3))
    index_workdir(root / "wd", "tracin", MethodSettings(params=["head"], device="cpu"))
    db = open_db(default_url(root / "wd"))
    scan_workdir(root / "wd", "cv", flag_top=0.3, db=db, device="cpu")
    dataset = find_dataset(db, examples.fingerprint)
    flagged = {f.example_id for f in list_flags(db, dataset)}
    for i in HOSTILE:
        if i not in flagged:
            add_flag(db, dataset, i, "mislabeled", source="scan", suggested_label="tech", who="")
    db.close()
    return root / "wd"


@pytest.fixture
def review_copy(review_workdir, tmp_path):
    return shutil.copytree(review_workdir, tmp_path / "wd")
