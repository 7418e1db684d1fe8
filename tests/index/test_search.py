"""FAISS indexes: exact search equals brute force, HNSW recall is measured, files are whole, meta refuses staleness."""

import numpy as np
import pytest

from datablame.index.search import IndexMeta, VectorIndex, prepare, recall_at_k
from datablame.influence.errors import DatablameError


def sketches(n=2000, d=32, seed=0):
    """Clustered vectors with a wide spread of norms, like gradient sketches."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    x = centers[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, d))
    return (x * np.exp(rng.normal(scale=1.0, size=(n, 1)))).astype(np.float32)


def meta(scoring, d=32):
    return IndexMeta(method="tracin", scoring=scoring, kind="exact", n=0, dim=d, key={"data": "x"})


@pytest.mark.parametrize("scoring", ["raw", "cosine"])
def test_exact_search_is_brute_force(scoring):
    x, q = sketches(), sketches(5, seed=1)
    index = VectorIndex.build(x, meta(scoring))
    scores, ids = index.search(q, 10)
    brute = prepare(q, scoring) @ prepare(x, scoring).T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute, ids, 1), scores, rtol=1e-4, atol=1e-5)
    if scoring == "cosine":
        assert np.all(np.abs(scores) <= 1 + 1e-5)


@pytest.mark.parametrize("scoring", ["raw", "cosine"])
@pytest.mark.parametrize("k", [10, 3000])
def test_search_both_is_two_searches(scoring, k, monkeypatch):
    import datablame.index.search as search

    # slices of 467 training rows and blocks of 7 queries: the running top-k merges many partial lists
    monkeypatch.setattr(search, "SCORE_BLOCK", 467 * 7)
    monkeypatch.setattr(search, "SCORE_QUERIES", 7)
    x, q = sketches(), sketches(30, seed=1)
    index = VectorIndex.build(x, meta(scoring))
    s, i, o, j = index.search_both(q, k)
    expected_s, expected_i = index.search(q, k)
    negated_s, expected_j = index.search(-q, k)
    brute = prepare(q, scoring) @ prepare(x, scoring).T
    np.testing.assert_allclose(s, expected_s, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(o, -negated_s, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(brute, i, 1), s, rtol=1e-4, atol=1e-3)  # ids hold those scores
    np.testing.assert_allclose(np.take_along_axis(brute, j, 1), o, rtol=1e-4, atol=1e-3)
    if k < len(x):  # no near-ties at the top: the same ids as FAISS
        np.testing.assert_array_equal(i, expected_i)
        np.testing.assert_array_equal(j, expected_j)
    assert np.all(np.diff(o, axis=1) >= 0)  # opposing: most negative first
    hnsw = VectorIndex.build(x, meta(scoring), approximate=True)
    s, i, o, j = hnsw.search_both(q, 10)
    np.testing.assert_array_equal(j, hnsw.search(-q, 10)[1])


def test_cosine_and_raw_rank_differently():
    x = sketches()
    q = sketches(20, seed=2)
    raw = VectorIndex.build(x, meta("raw")).search(q, 10)[1]
    cos = VectorIndex.build(x, meta("cosine")).search(q, 10)[1]
    assert recall_at_k(raw, cos) < 0.9  # raw favours large norms


def test_hnsw_recall_is_measured_and_high(tmp_path):
    x = sketches(3000)
    index = VectorIndex.build(x, meta("raw"), approximate=True)
    assert index.meta.kind == "hnsw" and 0.9 <= index.meta.recall_at_10 <= 1.0
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, "tracin", "raw")
    assert loaded.meta.hnsw["efSearch"] == loaded.index.hnsw.efSearch
    q = sketches(50, seed=3)
    exact = VectorIndex.build(x, meta("raw")).search(q, 10)[1]
    assert recall_at_k(loaded.search(q, 10)[1], exact) >= 0.9


def test_recall_at_k_counts_overlap():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 1]])) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[1, -1]]), np.array([[1, -1]])) == 1.0


def test_save_load_and_staleness(tmp_path):
    x = sketches(100)
    VectorIndex.build(x, meta("raw")).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracin-raw.faiss", "tracin-raw.json"]
    index = VectorIndex.load(tmp_path, "tracin", "raw")
    assert index.meta.n == 100 and index.search(x[:1], 200)[1].shape == (1, 100)
    index.check_fresh({"data": "x"})
    with pytest.raises(DatablameError, match="stale.*data.*datablame index"):
        index.check_fresh({"data": "y"})
    with pytest.raises(DatablameError, match="no cosine index for tracin"):
        VectorIndex.load(tmp_path, "tracin", "cosine")
    with pytest.raises(DatablameError, match="dimension"):
        index.search(np.zeros((1, 3), np.float32), 5)


def test_hnsw_widens_its_search_until_unlike_queries_reach_the_target():
    """Queries far from the training vectors (like curvature-corrected influence queries) may need a larger
    efSearch than training-like ones; the kept one is the smallest measured to reach the target, or the largest."""
    from datablame.index.search import HNSW_EF_SEARCH, RECALL_MARGIN

    x = sketches(3000)
    unlike = np.random.default_rng(5).standard_normal((100, x.shape[1])).astype(np.float32)
    index = VectorIndex.build(x, meta("cosine"), approximate=True, queries=unlike, fallback=False)
    tried = {int(e): r for e, r in index.meta.hnsw["recall_by_efSearch"].items()}
    chosen = index.meta.hnsw["efSearch"]
    assert list(tried) == [e for e in HNSW_EF_SEARCH if e <= chosen]
    assert all(r < RECALL_MARGIN for e, r in tried.items() if e < chosen)
    assert index.meta.recall_at_10 == pytest.approx(tried[chosen], abs=1e-4)
    assert tried[chosen] >= RECALL_MARGIN or chosen == HNSW_EF_SEARCH[-1]
    both = np.concatenate([unlike, -unlike])
    exact = VectorIndex.build(x, meta("cosine")).search(both, 10)[1]
    assert recall_at_k(index.search(both, 10)[1], exact) == pytest.approx(index.meta.recall_at_10, abs=1e-4)


def test_hnsw_that_cannot_reach_the_target_falls_back_to_exact(monkeypatch, tmp_path):
    import datablame.index.search as search

    monkeypatch.setattr(search, "HNSW_EF_SEARCH", (1,))  # a search too narrow to reach the target
    x = sketches(3000)
    index = VectorIndex.build(x, meta("cosine"), approximate=True)
    assert index.meta.kind == "exact" and "rejected" in index.meta.hnsw
    index.save(tmp_path)
    index = VectorIndex.load(tmp_path, "tracin", "cosine")
    assert index.meta.kind == "exact"
    assert index.meta.hnsw["recall_by_efSearch"]["1"] < search.RECALL_TARGET
    q = sketches(20, seed=4)
    exact = VectorIndex.build(x, meta("cosine")).search(q, 10)[1]
    assert recall_at_k(index.search(q, 10)[1], exact) == 1.0


@pytest.mark.parametrize("scoring", ["raw", "cosine"])
def test_ivfpq_reads_stored_shards_and_reranks_exactly(scoring, tmp_path, monkeypatch):
    """IVF-PQ over vectors stored as shards: chosen by size, recall measured and high, scores exact inner products
    of the stored rows, the same after save and load, and refused without the rows it re-ranks on."""
    import datablame.index.search as search
    from datablame.index.rows import StoredRows

    x, q = sketches(12_000), sketches(20, seed=1)
    for i, lo in enumerate(range(0, len(x), 5000)):
        np.save(tmp_path / f"shard-{i}.npy", x[lo:lo + 5000])
    rows = StoredRows(sorted(tmp_path.glob("shard-*.npy")))
    assert rows.shape == x.shape and np.array_equal(rows[np.array([11_999, 0, 5000])], x[[11_999, 0, 5000]])
    assert search.approximate_kind(*x.shape) == "hnsw"
    monkeypatch.setattr(search, "HNSW_MAX_BYTES", 1 << 20)  # 1 MiB: these 12,000 vectors are "too many"
    assert search.approximate_kind(*x.shape) == "ivfpq"
    index = VectorIndex.build(rows, meta(scoring), approximate=True)
    assert index.meta.kind == "ivfpq" and index.meta.recall_at_10 >= search.RECALL_MARGIN
    assert index.meta.ivf["nlist"] == 64 and index.meta.ivf["pq"].startswith("16x4")
    scores, ids = index.search(q, 10)
    brute = prepare(q, scoring) @ prepare(x, scoring).T
    np.testing.assert_allclose(scores, np.take_along_axis(brute, ids, 1), rtol=1e-5, atol=1e-6)
    assert recall_at_k(ids, np.argsort(-brute, axis=1)[:, :10]) >= 0.9
    index.save(tmp_path)
    again = VectorIndex.load(tmp_path, "tracin", scoring, lambda meta: rows)
    assert np.array_equal(again.search(q, 10)[1], ids)
    with pytest.raises(DatablameError, match="IVF-PQ index needs"):
        VectorIndex.load(tmp_path, "tracin", scoring)
