"""``scan --verify --dev``: the head retrained with the flagged examples relabeled, without them, and without as
many random ones, each measured on held-out data; the original is the workdir's own head."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_rows, write_csv

from datablame.influence.data import load_examples
from datablame.influence.errors import DatablameError
from datablame.influence.models import load_classifier
from datablame.influence.workdir import Workdir
from datablame.store.db import default_url, open_db
from datablame.store.scan_verify import verify_scan
from datablame.store.scanning import scan_workdir


@pytest.fixture
def scanned(frozen_workdir, tmp_path):
    wd = shutil.copytree(frozen_workdir, tmp_path / "wd")
    db = open_db(default_url(wd))
    result = scan_workdir(wd, "cv", flag_top=0.1, db=db, device="cpu")
    db.close()
    return wd, result, write_csv(tmp_path / "dev.csv", make_rows(30, seed=7))


def test_verify_scan_retrains_four_ways_and_the_original_is_the_checkpoint(scanned):
    wd, result, dev = scanned
    check = verify_scan(wd, result, 0.1, dev, draws=3)
    assert check.flagged == 5 and check.dev_examples == 30 and len(check.accuracy["removed_random"]) == 3
    assert set(check.loss) == set(check.accuracy) == {"original", "relabeled", "removed", "removed_random"}
    # the original retraining is the workdir's own head: its accuracy on dev is the checkpoint's
    config = Workdir(wd).load()
    model, task = load_classifier(Workdir(wd).checkpoint_path(config.checkpoints[-1]), config.label_names, "cpu")
    held_out = load_examples(dev, label_names=config.label_names)
    with torch.no_grad():
        predicted = task.logits(model, task.encode(held_out.texts)).argmax(-1).numpy()
    assert check.accuracy["original"] == pytest.approx(float(np.mean(predicted == held_out.labels)))
    assert json.loads(json.dumps(check.to_json()))["flagged"] == 5


def test_verify_scan_refuses_a_dev_file_with_unknown_labels(scanned, tmp_path):
    wd, result, _ = scanned
    bad = write_csv(tmp_path / "bad.csv", [{"text": "goal match", "label": "weather"}])
    with pytest.raises(DatablameError, match="weather"):
        verify_scan(wd, result, 0.1, bad)
