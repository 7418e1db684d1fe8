"""Retraining checks: retrain_heads replays train --freeze-encoder's recipe (all rows: the checkpoint's head; a
subset: torch's AdamW on just those rows), and verify reports each removal's margin."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from brute import replay

from datablame.index.explain import Explainer
from datablame.index.verify import same_label_draws, verify, verify_slice
from datablame.influence.errors import DatablameError
from datablame.influence.features import FeatureCache
from datablame.influence.models import load_classifier
from datablame.influence.retrain import initial_head, recipe, retrain_heads
from datablame.influence.train import train
from datablame.influence.workdir import Workdir

TEXT = "goal team the very"


def features(wd: Workdir):
    config = wd.load()
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names)
    train_examples = wd.load_examples(config)
    x = FeatureCache(train_examples, wd.features_cache).of(task, model).rows(np.arange(len(train_examples)))
    return config, task, task.head(model), x, torch.as_tensor(train_examples.labels)


def test_retrain_heads_replays_the_recipe(frozen_workdir):
    wd = Workdir(frozen_workdir)
    config, task, head, x, y = features(wd)
    n, settings = len(y), recipe(config)
    init = initial_head(config)
    subsets = [np.arange(n), np.arange(n)[7:], np.arange(n)[::3]]  # 41 and 16 rows: other step counts
    heads = retrain_heads(init, x, y, subsets, settings)
    assert torch.allclose(heads.weight[0], head.weight, atol=1e-5)  # all rows: the final checkpoint
    assert torch.allclose(heads.bias[0], head.bias, atol=1e-5)
    assert (heads.weight[0] - init.weight).abs().max() > 1e-2  # it did train
    for i, rows in enumerate(subsets[1:], 1):
        brute = replay(task, init, x, y, rows, settings)
        assert torch.allclose(heads.weight[i], brute.weight, atol=1e-5)
        assert torch.allclose(heads.bias[i], brute.bias, atol=1e-5)
    paired = retrain_heads(init, x, y, subsets, settings, paired=True)
    assert torch.allclose(paired.weight[0], head.weight, atol=1e-5)
    for i, rows in enumerate(subsets[1:], 1):
        brute = replay(task, init, x, y, rows, settings, paired=True)
        assert torch.allclose(paired.weight[i], brute.weight, atol=1e-5)
        assert torch.allclose(paired.bias[i], brute.bias, atol=1e-5)
        assert not torch.allclose(paired.weight[i], heads.weight[i], atol=1e-3)  # another protocol
    with pytest.raises(DatablameError, match="empty"):
        retrain_heads(init, x, y, [np.arange(0)], settings)


def test_same_label_draws():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    chosen = np.array([0, 4, 5])
    for draw in same_label_draws(labels, chosen, 4, seed=0):
        assert sorted(labels[draw]) == [0, 1, 1] and not set(draw) & set(chosen)


def test_verify_reports_each_removal(frozen_workdir):
    explainer = Explainer(frozen_workdir, "tracin", cache=False)
    raw = explainer.with_scoring("raw")
    checks = verify([explainer, raw], TEXT, k=3, draws=2)
    assert len(checks) == 2
    model_margin = None
    for check, e in zip(checks, (explainer, raw)):
        [explanation] = e.explain([TEXT], top=3)
        assert check.removed["top"] == [n.id for n in explanation.supporting]
        assert check.removed["opposing"] == [n.id for n in explanation.opposing]
        assert len(check.removed["random"]) == 2 and all(len(r) == 3 for r in check.removed["random"])
        assert set(check.margin) == set(check.probability) == {"original", "without_top", "without_random",
                                                                "without_opposing"}
        assert len(check.margin["without_random"]) == 2
        m = check.margin
        assert check.holds == (m["without_top"] < min(m["without_random"]) and m["without_opposing"] > m["original"])
        assert check.flipped == (m["without_top"] < 0) and check.label == explanation.prediction["label"]
        assert m["original"] > 0  # the predicted label's margin, on a head that reproduces the checkpoint
        model_margin = model_margin or m["original"]
        assert m["original"] == pytest.approx(model_margin)  # one shared retraining run
    p = checks[0].probability["original"]
    [explanation] = explainer.explain([TEXT], top=3)
    assert p == pytest.approx(explanation.prediction["probability"], abs=1e-4)


def test_verify_slice(frozen_workdir):
    explainer = Explainer(frozen_workdir, "tracin", "raw", cache=False)
    [one] = verify([explainer], TEXT, k=3, draws=2)
    [alone] = verify_slice([explainer], [TEXT], k=3, draws=2)  # a slice of one input: the same check
    assert alone.margin == one.margin and alone.removed == one.removed and alone.inputs == 1
    texts = [TEXT, "soup bread and my", "code phone today"]
    [check] = verify_slice([explainer], texts, k=3, draws=2)
    [aggregate] = [explainer.explain_aggregate(texts, top=3)]
    assert check.inputs == 3 and check.removed["top"] == [n.id for n in aggregate.supporting]
    singles = [verify([explainer], t, k=3, draws=2)[0].margin["original"] for t in texts]
    assert check.margin["original"] == pytest.approx(np.mean(singles), abs=1e-5)  # the mean of each input's margin
    assert 0 <= check.flipped_share <= 1


def test_training_with_rows_left_out_is_paired(frozen_workdir, trained_workdir, tmp_path):
    """train(leave_out=…) is the counterfactual that retrain_heads replays paired, also where a batch is left empty
    (a zero-gradient AdamW step); with nothing left out, a whole fine-tune reproduces the workdir's final weights."""
    wd = Workdir(frozen_workdir)
    config, task, _, x, y = features(wd)
    settings = recipe(config)
    first_batch = torch.randperm(len(y), generator=torch.Generator().manual_seed(settings.seed))[:settings.batch_size]
    left_out = np.union1d(first_batch.numpy(), [5, 17])
    done = train(wd.load_examples(config), config.base_model, tmp_path / "frozen", replace(settings, device="cpu"),
                 leave_out=left_out)
    model, _ = load_classifier(Workdir(tmp_path / "frozen").checkpoint_path(done.checkpoints[-1]), config.label_names)
    paired = retrain_heads(initial_head(config), x, y, [np.setdiff1d(np.arange(len(y)), left_out)], settings,
                           paired=True)
    assert torch.allclose(task.head(model).weight, paired.weight[0], atol=1e-5)
    assert torch.allclose(task.head(model).bias, paired.bias[0], atol=1e-5)
    whole = Workdir(trained_workdir)
    config = whole.load()
    done = train(whole.load_examples(config), config.base_model, tmp_path / "whole",
                 replace(recipe(config, frozen=False), checkpoints=1, device="cpu"), leave_out=np.zeros(0, np.int64))
    again = load_classifier(Workdir(tmp_path / "whole").checkpoint_path(done.checkpoints[-1]), config.label_names)[0]
    final = load_classifier(whole.checkpoint_path(config.checkpoints[-1]), config.label_names)[0]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), final.state_dict().values()))
