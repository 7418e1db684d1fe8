"""scan --method aum: the area under the margin from the head's training replayed (checked against a brute-force
replay one AdamW step at a time), ranked low-margin first; refused for a whole fine-tune."""

import shutil

import numpy as np
import pytest
import torch
from brute import replay

from datablame.influence import detect
from datablame.influence.errors import DatablameError
from datablame.influence.features import FeatureCache
from datablame.influence.models import load_classifier
from datablame.influence.retrain import area_under_margin, initial_head, recipe
from datablame.influence.workdir import Workdir
from datablame.store.scanning import scan_workdir


def test_area_under_margin_is_the_mean_epoch_margin(frozen_workdir):
    wd = Workdir(frozen_workdir)
    config = wd.load()
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names)
    examples = wd.load_examples(config)
    x = FeatureCache(examples, wd.features_cache).of(task, model).rows(np.arange(len(examples)))
    y = torch.as_tensor(examples.labels)
    settings, init = recipe(config), initial_head(config)
    margins = []

    def record(head):
        with torch.no_grad():
            logits = head(x).double()
        given = logits[torch.arange(len(y)), y]
        margins.append((given - logits.scatter(1, y[:, None], -torch.inf).max(1).values).numpy())

    replay(task, init, x, y, np.arange(len(y)), settings, on_epoch=record)
    assert len(margins) == settings.epochs
    np.testing.assert_allclose(area_under_margin(init, x, y, settings), np.mean(margins, 0), atol=1e-4)


def test_aum_ranks_low_margins_first():
    aum = np.array([3.0, -1.0, 0.5, 2.0])
    issues = detect.rank_label_issues([0, 1, 0, 1], probabilities=np.full((4, 2), 0.5), weights={"aum": 1.0},
                                      area_under_margin=aum)
    assert issues.order.tolist() == [1, 2, 3, 0]


def test_scan_aum(frozen_workdir, trained_workdir, tmp_path):
    frozen, whole = tmp_path / "frozen", tmp_path / "whole"
    for source, copy in ((frozen_workdir, frozen), (trained_workdir, whole)):  # the scan writes a store
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("index", "vectors", "*.db*"))
    result = scan_workdir(frozen, "aum", 0.1, device="cpu")
    assert result.method == "aum" and set(result.issues.parts) >= {"aum"}
    assert len(result.issues.order) == len(result.examples)
    with pytest.raises(DatablameError, match="retraining the head needs a frozen encoder"):
        scan_workdir(whole, "aum", 0.1, device="cpu")
