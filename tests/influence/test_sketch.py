"""Sketched inner products against exact ones, within the Johnson-Lindenstrauss error for the dimension."""

import math

import pytest
import torch

from datablame.influence.sketch import CountSketch, GaussianProjection, make_projector


def correlated_vectors(n: int, p: int, seed: int = 0) -> torch.Tensor:
    """Rows sharing a common direction (so inner products are far from 0) with varied norms, like gradients."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(p, generator=g)
    x = 0.6 * base + torch.randn(n, p, generator=g)
    return x * torch.rand(n, 1, generator=g).mul(10).add(0.1)


@pytest.mark.parametrize("cls", [CountSketch, GaussianProjection])
@pytest.mark.parametrize("k", [64, 256])
def test_inner_products_within_jl_error(cls, k):
    z = correlated_vectors(70, 6000, 1)
    x, y = z[:40], z[40:]
    proj = cls(6000, k, seed=3, chunk=1000)
    exact = x @ y.T
    approx = proj(x) @ proj(y).T
    # Var <Px, Py> <= (|x|^2 |y|^2 + <x,y>^2) / k <= 2 |x|^2 |y|^2 / k for both projections.
    err = (approx - exact) / (x.norm(dim=1)[:, None] * y.norm(dim=1)[None, :])
    sigma = math.sqrt(2 / k)
    assert err.pow(2).mean().sqrt() < 1.2 * sigma
    assert err.abs().max() < 5 * sigma


@pytest.mark.parametrize("cls", [CountSketch, GaussianProjection])
def test_seeded_and_chunk_independent(cls):
    x = correlated_vectors(5, 3000)
    a = cls(3000, 32, seed=7, chunk=3000)(x)
    b = cls(3000, 32, seed=7, chunk=3000, cache_bytes=0)(x)
    assert torch.equal(a, b)
    c = cls(3000, 32, seed=8, chunk=3000)(x)
    assert not torch.allclose(a, c)
    # batch composition does not change an example's sketch
    assert torch.allclose(cls(3000, 32, seed=7, chunk=3000)(x[2:3]), a[2:3], atol=1e-5)


def test_identity_when_not_smaller():
    proj = make_projector("countsketch", 100, 256)
    x = torch.randn(3, 100)
    assert proj.out_dim == 100 and torch.equal(proj(x), x)
    with pytest.raises(ValueError):
        make_projector("nope", 1000, 10)
