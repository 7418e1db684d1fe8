"""Explain through the index: equal to the brute-force ranking, aggregates, cached queries, stale indexes refused."""

import json
import shutil

import numpy as np
import pytest
import torch

from datablame.index.explain import Explainer, index_workdir
from datablame.index.vectors import VectorStore
from datablame.influence.build import MethodSettings
from datablame.influence.errors import DatablameError
from datablame.influence.grads import select_params
from brute import QUERIES, loop_grads

HEAD = MethodSettings(params=["head"], dim=256, device="cpu")  # 99 parameters < 256: no projection, exact


@pytest.fixture(scope="module")
def indexed(trained_workdir, tmp_path_factory):
    """A copy of the trained workdir indexed for every method (head parameters, exact vectors)."""
    wd = tmp_path_factory.mktemp("indexed") / "wd"
    shutil.copytree(trained_workdir, wd)
    for method in ("tracin", "influence", "representer"):
        index_workdir(wd, method, HEAD)
    return wd


def brute_tracin(trained, train, preds, scoring):
    """(b, n) TracIn scores Σ_c lr_c g_c(q)·g_c(i) from one backward per example; cosine divides by both norms."""
    models, lrs, task = trained
    names = select_params(models[-1], task, ["head"])
    raw, norm_t, norm_q = 0, 0, 0
    for model, lr in zip(models, lrs):
        gt = loop_grads(task, model, train.texts, train.labels, names).double()
        gq = loop_grads(task, model, QUERIES, preds, names).double()
        raw = raw + lr * gq @ gt.T
        norm_t, norm_q = norm_t + lr * gt.pow(2).sum(1), norm_q + lr * gq.pow(2).sum(1)
    if scoring == "cosine":
        raw = raw / norm_q.sqrt()[:, None] / norm_t.sqrt()[None, :]
    return raw.numpy()


def assert_ranked_like(result, row, top):
    """Supporting = the top of ``row``, opposing = its bottom, with the same scores (ties may swap ids)."""
    best = np.sort(row)[::-1][:top]
    worst = np.sort(row)[:top]
    np.testing.assert_allclose([n.score for n in result.supporting], best, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose([n.score for n in result.opposing], worst, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(row[[n.id for n in result.supporting]], best, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(row[[n.id for n in result.opposing]], worst, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("scoring", ["raw", "cosine"])
def test_tracin_explain_equals_brute_force(indexed, trained, tiny_examples, scoring):
    """Against TracIn from explicit per-example gradients, not the method's own code."""
    results = Explainer(indexed, "tracin", scoring, device="cpu", cache=False).explain(QUERIES, top=5)
    preds = [tiny_examples.label_names.index(r.prediction["label"]) for r in results]
    ref = brute_tracin(trained, tiny_examples, preds, scoring)
    for result, row in zip(results, ref):
        assert_ranked_like(result, row, 5)
        first = result.supporting[0]
        assert first.text == tiny_examples.texts[first.id]
        assert first.label == tiny_examples.label_names[tiny_examples.labels[first.id]]
        assert result.method == "tracin" and result.scoring == scoring


@pytest.mark.parametrize("method", ["influence", "representer"])
def test_explain_equals_brute_force_of_stored_vectors(indexed, method):
    explainer = Explainer(indexed, method, "raw", device="cpu", cache=False)
    train = VectorStore(indexed / "vectors" / method).load()
    q = explainer.method.query_vectors(QUERIES)
    for result, row in zip(explainer.explain(QUERIES, top=4), (q.vectors.numpy() @ train.T)):
        assert_ranked_like(result, row, 4)


def test_aggregate_is_the_search_with_summed_unit_queries(indexed, trained, tiny_examples):
    explainer = Explainer(indexed, "tracin", "cosine", device="cpu", cache=False)
    result = explainer.explain_aggregate(QUERIES, top=6)
    q = explainer.queries(QUERIES)[0].vectors.double().numpy()
    total = (q / np.linalg.norm(q, axis=1, keepdims=True)).sum(0)
    train = VectorStore(indexed / "vectors" / "tracin").load().astype(np.float64)
    row = (train / np.linalg.norm(train, axis=1, keepdims=True)) @ total / np.linalg.norm(total)
    assert_ranked_like(result, row, 6)
    assert sum(result.prediction["counts"].values()) == len(QUERIES)
    assert result.text == QUERIES and result.timing["queries"] == len(QUERIES)
    json.dumps(result.to_json())


def test_query_vectors_are_cached(indexed):
    explainer = Explainer(indexed, "influence", "cosine", device="cpu")
    first, cached = explainer.queries(QUERIES[:2])
    assert cached == 0
    again, cached = Explainer(indexed, "influence", "cosine", device="cpu").queries(QUERIES[:2])
    assert cached == 2
    torch.testing.assert_close(again.vectors, first.vectors)
    assert torch.equal(again.predictions, first.predictions)
    other, cached = Explainer(indexed, "influence", "cosine", device="cpu", curvature="sketch").queries(QUERIES[:2])
    assert cached == 0  # another query side, another cache entry


def test_sketch_curvature_solves_the_gauss_newton_system(indexed, trained, tiny_examples):
    """u_q = (VᵀV/n + λI)^{-1} g_q with V the exact (unprojected) head gradients of the training set, in the
    softmax basis the exact vectors are kept in."""
    models, _, task = trained
    explainer = Explainer(indexed, "influence", "raw", device="cpu", curvature="sketch", cache=False)
    q = explainer.method.query_vectors(QUERIES)
    names = select_params(models[-1], task, ["head"])
    v = loop_grads(task, models[-1], tiny_examples.texts, tiny_examples.labels, names).double()
    g = loop_grads(task, models[-1], QUERIES, q.predictions.tolist(), names).double()
    damping = explainer.settings.lissa.damping
    expected = torch.linalg.solve(v.T @ v / len(v) + damping * torch.eye(v.shape[1], dtype=v.dtype), g.T).T
    torch.testing.assert_close(q.vectors.double(), explainer.method.projector(expected).double(), rtol=1e-3,
                               atol=1e-4)


def test_stale_index_is_refused(indexed, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(indexed, wd)
    config = json.loads((wd / "config.json").read_text())
    config["checkpoints"][0]["learning_rate"] *= 2
    (wd / "config.json").write_text(json.dumps(config))
    with pytest.raises(DatablameError, match="tracin index is stale.*checkpoints.*datablame index"):
        Explainer(wd, "tracin", "cosine", device="cpu")
    Explainer(wd, "influence", "cosine", device="cpu")  # built from the last checkpoint only: still fresh


def test_influence_recall_sample_is_curvature_corrected(indexed):
    """HNSW's build-time recall for influence is measured on query-like vectors: (VᵀV/n + λI)⁻¹ v_i."""
    from datablame.index.explain import recall_sample

    v = VectorStore(indexed / "vectors" / "influence").load()
    influence = Explainer(indexed, "influence", "raw", device="cpu", cache=False).method
    sample = recall_sample(influence, v, seed=0, m=5)
    rows = np.random.default_rng(0).choice(len(v), 5, replace=False)
    ref = np.linalg.solve(v.astype(np.float64).T @ v / len(v) + influence.config.damping * np.eye(v.shape[1]),
                          v[rows].astype(np.float64).T).T
    np.testing.assert_allclose(sample, ref, rtol=1e-4, atol=1e-6)
    assert recall_sample(Explainer(indexed, "tracin", "raw", device="cpu", cache=False).method, v) is None
