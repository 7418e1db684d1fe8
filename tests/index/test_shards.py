"""Sharded vectors at the library level: parts computed apart and finalized once equal one process; a part run
again computes only its missing shards; finalize refuses, writing nothing, while a shard is missing."""

import numpy as np
import pytest
from test_vectors import FakeMethod, examples

from datablame.index.shards import Part
from datablame.index.vectors import VectorStore
from datablame.influence.errors import DatablameError


def files(store):
    return {p.name: p.read_bytes() for p in store.folder.iterdir()}


@pytest.mark.parametrize("text, part", [("0/1", Part(0, 1)), ("2/3", Part(2, 3))])
def test_a_part_is_i_of_n(text, part):
    assert Part.parse(text) == part and str(part) == text


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_a_bad_part_is_one_line(text):
    with pytest.raises(DatablameError, match=r"is not I/N with 0 ≤ I < N"):
        Part.parse(text)


def test_parts_then_finalize_equal_one_process(tmp_path):
    alone = VectorStore(tmp_path / "alone")
    alone.compute(FakeMethod(), examples(), {"k": 1}, shard_size=3)
    shared = VectorStore(tmp_path / "shared")
    plan = shared.plan({"k": 1}, 10, FakeMethod.dim, shard_size=3)
    done = [shared.compute_shards(FakeMethod(), examples(), shared.plan({"k": 1}, 10, 3, shard_size=3), Part(i, 3))
            for i in range(3)]
    assert done == [[0, 3], [1], [2]]  # part i takes shards i, i + 3, …
    with pytest.raises(DatablameError):  # nothing is finalized yet: the manifest lists no shard
        shared.load()
    shared.finalize(FakeMethod(), examples(), plan)
    assert files(shared) == files(alone)


def test_a_part_run_again_computes_only_its_missing_shards(tmp_path):
    store = VectorStore(tmp_path / "v")
    plan = store.plan({"k": 1}, 10, FakeMethod.dim, shard_size=2)  # 5 shards
    store.compute_shards(FakeMethod(), examples(), plan, Part(1, 2), batch_size=2)  # shards 1, 3
    store.shard_path(3).unlink()  # as if that worker was killed before writing it
    method = FakeMethod()
    assert store.compute_shards(method, examples(), store.plan({"k": 1}, 10, 3, shard_size=2), Part(1, 2),
                                batch_size=2) == [3]
    assert method.calls == 1


def test_finalize_refuses_while_a_shard_is_missing(tmp_path):
    store = VectorStore(tmp_path / "v")
    plan = store.plan({"k": 1}, 10, FakeMethod.dim, shard_size=4)
    store.compute_shards(FakeMethod(), examples(), plan, Part(0, 2))
    before = files(store)
    with pytest.raises(DatablameError, match=r"1 of 3 vector shards are missing in .* \(shard 1\)"):
        store.finalize(FakeMethod(), examples(), plan)
    assert files(store) == before and "self_influence.npy" not in before


def test_a_plan_of_other_vectors_replaces_the_folder_and_the_same_plan_keeps_it(tmp_path):
    store = VectorStore(tmp_path / "v")
    store.compute(FakeMethod(), examples(), {"k": 1}, shard_size=4)
    assert store.plan({"k": 1}, 10, FakeMethod.dim, shard_size=4).done == [0, 1, 2]
    assert store.plan({"k": 2}, 10, FakeMethod.dim, shard_size=4).done == []
    assert sorted(p.name for p in store.folder.iterdir()) == ["manifest.json"]
