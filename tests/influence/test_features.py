"""The training-feature cache: one encoder pass for frozen-encoder checkpoints, equal results, keys that follow
the encoder."""

import math
import shutil

import numpy as np
import pytest
import torch

from datablame.influence.build import MethodSettings, build_method
from datablame.influence.features import FeatureCache, features_folder
from datablame.influence.grads import num_params, per_example_grads
from datablame.influence.methods import compute_train_vectors
from datablame.influence.models import load_classifier
from datablame.influence.train import TrainSettings, train
from datablame.influence.workdir import Workdir

from brute import QUERIES

SETTINGS = MethodSettings(dim=64, device="cpu")  # default parameters: the head, after --freeze-encoder


@pytest.fixture(scope="module")
def frozen_workdir(tiny_bert, tiny_examples, tmp_path_factory):
    """The tiny BERT with a frozen encoder, its head trained with 3 checkpoints."""
    wd = tmp_path_factory.mktemp("frozen") / "wd"
    train(tiny_examples, str(tiny_bert), wd, TrainSettings(epochs=5, lr=5e-2, batch_size=8, checkpoints=3,
                                                          freeze_encoder=True, device="cpu"))
    return wd


def fresh_copy(workdir, tmp_path, cache: bool):
    """A copy of the workdir, with or without its feature cache (a fresh process finds only what is on disk)."""
    dest = tmp_path / "wd"
    shutil.copytree(workdir, dest)
    if not cache:
        shutil.rmtree(features_folder(dest), ignore_errors=True)
    return dest


class EncoderRows:
    """Counts the rows that go through the embeddings of the given models (one per encoder forward pass)."""

    def __init__(self, models):
        self.rows = 0
        self.hooks = [m.base_model.embeddings.register_forward_hook(self._count) for m in models]

    def _count(self, _module, _inputs, output):
        self.rows += output.shape[0]

    def close(self):
        for h in self.hooks:
            h.remove()


def models_of(built):
    m = built.method
    return [c for c, _ in m.checkpoints] if m.name == "tracin" else [m.model]


def test_frozen_checkpoints_share_one_key_and_a_changed_encoder_does_not(frozen_workdir, trained_workdir,
                                                                        tiny_examples):
    cfg = Workdir(frozen_workdir).load()
    loaded = [load_classifier(Workdir(frozen_workdir).checkpoint_path(c), cfg.label_names, "cpu", cfg.max_length)
              for c in cfg.checkpoints]
    cache = FeatureCache(tiny_examples)
    keys = {cache.key(task, model) for model, task in loaded}
    assert len(keys) == 1  # only the heads differ
    heads = [task.head(model).weight for model, task in loaded]
    assert not torch.equal(heads[0], heads[-1])
    model, task = loaded[-1]
    with torch.no_grad():
        task.head(model).weight.add_(1.0)  # the head is not part of the key
        assert cache.key(task, model) in keys
        next(p for n, p in model.named_parameters() if "encoder" in n).add_(1e-3)
        assert cache.key(task, model) not in keys  # the encoder is
    model, task = loaded[0]
    task.max_length = 7  # other tokenization, other features
    assert cache.key(task, model) not in keys
    # fine-tuned checkpoints (encoder trained too) each have their own features
    cfg = Workdir(trained_workdir).load()
    keys = {cache.key(task, model) for model, task in (
        load_classifier(Workdir(trained_workdir).checkpoint_path(c), cfg.label_names, "cpu") for c in cfg.checkpoints)}
    assert len(keys) == len(cfg.checkpoints)


def test_training_leaves_the_features_so_no_method_runs_the_encoder_on_training_data(frozen_workdir, tmp_path,
                                                                                    tiny_examples):
    wd = fresh_copy(frozen_workdir, tmp_path, cache=True)
    assert len(list(features_folder(wd).glob("*.npy"))) == 1
    for name in ("tracin", "influence", "representer"):
        built = build_method(wd, name, SETTINGS, fit=False)
        counter = EncoderRows(models_of(built))
        if name == "representer":
            built.method.fit(built.train)
        compute_train_vectors(built.method, built.train, batch_size=16)
        if name == "influence":
            p = num_params(built.method.model, built.method.names)
            built.method.inverse_hvp(torch.randn(2, p))  # LiSSA over the cached features
        counter.close()
        assert counter.rows == 0, name


def test_fresh_cache_encodes_each_training_example_once_for_all_checkpoints(frozen_workdir, tmp_path,
                                                                           tiny_examples):
    wd = fresh_copy(frozen_workdir, tmp_path, cache=False)
    built = build_method(wd, "tracin", SETTINGS)
    counter = EncoderRows(models_of(built))
    compute_train_vectors(built.method, built.train, batch_size=16)
    counter.close()
    assert len(built.method.checkpoints) == 3
    assert counter.rows == len(tiny_examples)  # not 3 ×: the checkpoints share the encoder
    assert len(list(features_folder(wd).glob("*.npy"))) == 1  # written once every row was known
    influence = build_method(wd, "influence", SETTINGS)  # as in a later process: read from disk
    counter = EncoderRows(models_of(influence))
    influence.method.inverse_hvp(torch.randn(1, num_params(influence.method.model, influence.method.names)))
    counter.close()
    assert counter.rows == 0


@pytest.mark.parametrize("name", ["tracin", "influence", "representer"])
def test_cached_features_give_the_uncached_results(frozen_workdir, tmp_path, name):
    wd = fresh_copy(frozen_workdir, tmp_path, cache=True)
    cached = build_method(wd, name, SETTINGS)
    plain = build_method(wd, name, SETTINGS)
    plain.method.gradients.features = None  # no cache at all: through the model, as before
    if name == "representer":
        plain.method.fit(plain.train)
    v_cached = compute_train_vectors(cached.method, cached.train, batch_size=16)
    v_plain = compute_train_vectors(plain.method, plain.train, batch_size=16)
    np.testing.assert_allclose(v_cached, v_plain, rtol=1e-4, atol=1e-6)
    if name == "influence":
        q_cached = cached.method.query_vectors(QUERIES).vectors
        q_plain = plain.method.query_vectors(QUERIES).vectors
        assert plain.method.hvp.train_features.path is None  # LiSSA computed its own features
        assert cached.method.hvp.train_features.encoded == 0
        torch.testing.assert_close(q_cached, q_plain, rtol=1e-4, atol=1e-6)


def through_each_checkpoint(tracin, texts, labels):
    """TracIn's query vectors with every checkpoint's gradients taken through the whole model, one by one."""
    batch = tracin.task.encode(texts)
    return torch.cat([math.sqrt(lr) * tracin.projector(per_example_grads(tracin.task, m, batch, labels, tracin.names))
                      for m, lr in tracin.checkpoints], dim=1)


def test_tracin_query_runs_a_shared_encoder_once(frozen_workdir, trained_workdir):
    built = build_method(frozen_workdir, "tracin", SETTINGS)
    assert built.method.encoder_groups() == [0, 0, 0]
    counter = EncoderRows(models_of(built))
    q = built.method.query_vectors(QUERIES)
    counter.close()
    assert counter.rows == len(QUERIES)  # once, for the prediction and all three checkpoints' gradients
    torch.testing.assert_close(q.vectors, through_each_checkpoint(built.method, QUERIES, q.predictions), rtol=1e-4, atol=1e-6)
    fine_tuned = build_method(trained_workdir, "tracin", MethodSettings(params=["head"], dim=64, device="cpu"))
    assert fine_tuned.method.encoder_groups() == [0, 1, 2]


def test_ranges_from_parts_are_read_and_only_the_rest_encoded(frozen_workdir, tmp_path, tiny_examples):
    """Rows that parts wrote in ranges are taken as known; the rows no range covers are the only ones encoded,
    and the whole matrix equals one computed at once."""
    wd = fresh_copy(frozen_workdir, tmp_path, cache=False)
    config = Workdir(wd).load()
    model, task = load_classifier(Workdir(wd).checkpoint_path(config.checkpoints[-1]), config.label_names, "cpu")
    part = FeatureCache(tiny_examples, features_folder(wd)).of(task, model)
    assert part.compute_range(0, 16) and part.compute_range(32, 48) and not part.compute_range(0, 16)
    later = FeatureCache(tiny_examples, features_folder(wd)).of(task, model)  # a later process
    counter = EncoderRows([model])
    rows = later.rows(np.arange(len(tiny_examples)))
    counter.close()
    assert counter.rows == 16  # rows 16 … 31 only
    whole = FeatureCache(tiny_examples).of(task, model).rows(np.arange(len(tiny_examples)))
    torch.testing.assert_close(rows, whole, atol=1e-5, rtol=1e-5)
    assert [p.name for p in features_folder(wd).iterdir()] == [f"{later.key}.npy"]  # the ranges taken, removed


def test_head_gradients_on_cached_features_take_large_batches(frozen_workdir, tmp_path, tiny_examples):
    """Head gradients read from the feature cache go in calls of up to 4,096 examples (calls of 32 were mostly
    overhead); without a cache the caller's batch stands (the encoder runs on it); the vectors do not change."""
    from datablame.influence.gradients import HEAD_BATCH, HeadGradients

    built = build_method(fresh_copy(frozen_workdir, tmp_path, cache=True), "tracin", SETTINGS)
    gradients = built.method.gradients
    assert isinstance(gradients, HeadGradients) and gradients.train_batch(32) == HEAD_BATCH
    assert HeadGradients(gradients.task, gradients.models, gradients.names, None).train_batch(32) == 32
    small = np.concatenate([built.method.train_vectors(b).numpy() for b in built.train.batches(8)])
    np.testing.assert_allclose(compute_train_vectors(built.method, built.train, 8), small, rtol=1e-5, atol=1e-6)
