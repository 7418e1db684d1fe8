"""The reductions over all training vectors (Gram matrices, kernels, self-influence) run block by block, so their
float64 copies stay one block: the blocks must add up to the same numbers as one pass over everything."""

import numpy as np
import pytest
import torch

from datablame.influence import methods
from datablame.influence.build import MethodSettings, build_method
from datablame.influence.methods import compute_train_vectors


@pytest.mark.parametrize("name", ["tracin", "influence", "trak"])
def test_blocks_add_up_to_one_pass(frozen_workdir, monkeypatch, name):
    built = build_method(frozen_workdir, name, MethodSettings(params=["head"], device="cpu", curvature="sketch"))
    vectors = torch.from_numpy(compute_train_vectors(built.method, built.train))
    labels = torch.as_tensor(built.train.labels)

    def reduce() -> dict:
        arrays = getattr(built.method, "finalize", lambda v: {})(vectors)
        return {**arrays, "self_influence": built.method.self_influence(vectors, labels).numpy()}

    whole = reduce()
    monkeypatch.setattr(methods, "ROWS", 5)  # 48 examples in 10 blocks, the last one short
    blocked = reduce()
    assert set(blocked) == set(whole)
    for key in whole:
        np.testing.assert_allclose(blocked[key], whole[key], rtol=1e-5, atol=1e-12, err_msg=key)
