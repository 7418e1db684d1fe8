"""Training vectors on disk: shards written whole, resume after interruption, recompute on a changed key."""

import numpy as np
import pytest
import torch

from datablame.index.rows import StoredRows
from datablame.index.vectors import VectorStore
from datablame.influence import methods
from datablame.influence.data import Examples


class FakeMethod:
    """v_i = (id, id², 1); counts calls and can fail after a number of batches, like a killed run."""

    name = "fake"
    dim = 3
    reads_rows = True

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def train_vectors(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        ids = torch.as_tensor(batch.ids, dtype=torch.float32)
        return torch.stack([ids, ids**2, torch.ones_like(ids)], 1)

    def finalize(self, vectors):
        return {"gram": methods.gram(vectors).numpy()}

    def self_influence(self, vectors, labels):
        return torch.cat([b.pow(2).sum(1) for b in methods.row_blocks(vectors)])


def examples(n=10):
    return Examples(texts=[f"t{i}" for i in range(n)], labels=np.zeros(n), label_names=["a"])


def test_finalize_streams_the_shards_block_by_block(tmp_path, monkeypatch):
    """finalize never loads the vectors whole: the reductions read blocks of rows across shard boundaries."""
    monkeypatch.setattr(methods, "ROWS", 4)
    monkeypatch.setattr(StoredRows, "__array__", lambda *a, **k: pytest.fail("the vectors were loaded whole"))
    store = VectorStore(tmp_path / "v")
    store.compute(FakeMethod(), examples(), {"k": 1}, shard_size=3)
    ids = np.arange(10, dtype=np.float64)
    v = np.stack([ids, ids**2, np.ones(10)], 1)
    np.testing.assert_allclose(np.load(store.folder / "final-gram.npy"), v.T @ v / 10)
    np.testing.assert_allclose(store.self_influence(), (v**2).sum(1))


def test_resume_after_interruption(tmp_path):
    store = VectorStore(tmp_path / "v")
    with pytest.raises(KeyboardInterrupt):
        store.compute(FakeMethod(fail_after=2), examples(), {"k": 1}, shard_size=4, batch_size=2)
    assert store.manifest().done == [0]  # shard 0 (2 batches) finished, shard 1 never started
    assert sorted(p.name for p in store.folder.iterdir()) == ["manifest.json", "shard-00000.npy"]
    method = FakeMethod()
    manifest = store.compute(method, examples(), {"k": 1}, shard_size=4, batch_size=2)
    assert method.calls == 3 and manifest.complete  # shards 1 (2 batches) and 2 (1 batch) only
    v = store.load()
    assert np.array_equal(v[:, 0], np.arange(10)) and v.dtype == np.float32
    assert np.allclose(store.self_influence(), (v**2).sum(1))


def test_changed_key_recomputes_and_float16(tmp_path):
    store = VectorStore(tmp_path / "v")
    store.compute(FakeMethod(), examples(), {"k": 1}, shard_size=4)
    method = FakeMethod()
    store.compute(method, examples(), {"k": 2}, dtype="float16", shard_size=4)
    assert method.calls == 3 and store.load().dtype == np.float16
    again = FakeMethod()
    store.compute(again, examples(), {"k": 2}, dtype="float16", shard_size=4)
    assert again.calls == 0
