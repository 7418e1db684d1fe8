"""LiSSA against the exact inverse of a Hessian small enough to build."""

import math

import pytest
import torch

from datablame.influence.errors import DatablameError
from datablame.influence.grads import select_params
from datablame.influence.lissa import HessianVectorProducts, LissaConfig, lissa

from brute import exact_hessian

PARAMS = ["classifier.*", "bert.pooler.*"]  # 1,155 parameters; tanh pooler makes the loss non-convex


@pytest.fixture(scope="module")
def exact(trained, tiny_examples):
    """(hvp on the full training set, names, exact Hessian (p, p) float64)."""
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, PARAMS)
    hvp = HessianVectorProducts(task, model, names, tiny_examples, batch_size=None)
    return hvp, names, exact_hessian(task, model, names, tiny_examples), model, task


def autograd_hvp(model, task, names, examples, v):
    """H v through the whole model by torch.autograd.functional.hvp (the reference)."""
    params = dict(model.named_parameters())
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    batch, labels = task.encode(examples.texts), torch.as_tensor(examples.labels)
    sizes = [params[n].numel() for n in names]

    def loss(flat):
        chunks = dict(zip(names, [c.reshape(params[n].shape) for c, n in zip(flat.split(sizes), names)]))
        full = {**{k: p.detach() for k, p in model.named_parameters()}, **chunks}
        return task.loss(task.functional_logits(model, full, batch), labels).mean()

    return torch.autograd.functional.hvp(loss, flat0, v)[1]


def test_hvp_matches_autograd_hessian(exact, tiny_examples):
    hvp, names, hessian, model, task = exact
    assert not hvp.head_only
    v = torch.randn(hessian.shape[0])
    ref = autograd_hvp(model, task, names, tiny_examples, v)
    assert torch.allclose(hvp(v[None])[0], ref, atol=1e-5, rtol=1e-3)
    assert torch.allclose(hessian.float() @ v, ref, atol=1e-4, rtol=1e-3)


def test_head_only_hvp_on_cached_features(trained, tiny_examples):
    """Head parameters: products from features computed once equal products through the whole model."""
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, ["head"])
    hvp = HessianVectorProducts(task, model, names, tiny_examples, batch_size=None)
    assert hvp.head_only
    v = torch.randn(2, 99, generator=torch.Generator().manual_seed(1))
    got = hvp(v)
    assert hvp.train_features.encoded == len(tiny_examples)
    for row, vec in zip(got, v):
        assert torch.allclose(row, autograd_hvp(model, task, names, tiny_examples, vec), atol=1e-5, rtol=1e-3)
    mini = HessianVectorProducts(task, model, names, tiny_examples, batch_size=8, seed=3)
    first = [mini(v) for _ in range(3)]
    mini.reset()
    again = [mini(v) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reset replays the same minibatches
    assert mini.train_features.encoded == 24


def test_lissa_matches_exact_inverse(exact):
    hvp, _, hessian, _, _ = exact
    eig = torch.linalg.eigvalsh(hessian)
    lo, hi = float(eig[0]), float(eig[-1])
    damping = max(0.05 - lo, (0.05 * hi - lo) / 0.95)  # H + λI positive definite, condition number ≤ 20
    scale = 2 * (hi + damping)
    # the error shrinks by 1 − λ_min(H + λI)/s per step: enough steps for 1e-4
    depth = int(math.log(1e-4) / math.log(1 - (lo + damping) / scale)) + 1
    v = torch.randn(3, hessian.shape[0], generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.solve(hessian + damping * torch.eye(hessian.shape[0], dtype=hessian.dtype), v.double().T).T
    est, report = lissa(hvp, v, LissaConfig(damping=damping, scale=scale, depth=depth, batch_size=None))
    rel = float((est.double() - ref).norm() / ref.norm())
    assert rel < 1e-3, rel
    assert report.converged and report.relative_change < 1e-3
    assert report.scale > float(eig[-1])


def test_stochastic_lissa_is_close(trained, tiny_examples, exact):
    hvp_full, names, hessian, model, task = exact
    damping = max(0.05, 0.05 - float(torch.linalg.eigvalsh(hessian)[0]))
    v = torch.randn(1, hessian.shape[0], generator=torch.Generator().manual_seed(1))
    ref = torch.linalg.solve(hessian + damping * torch.eye(hessian.shape[0], dtype=hessian.dtype), v.double().T).T
    hvp = HessianVectorProducts(task, model, names, tiny_examples, batch_size=16, seed=0)
    est, _ = lissa(hvp, v, LissaConfig(damping=damping, depth=600, repeats=2, batch_size=16,
                                       scale=2 * float(torch.linalg.eigvalsh(hessian)[-1]) + 1))
    cos = torch.nn.functional.cosine_similarity(est.double(), ref).item()
    assert cos > 0.9, cos


def test_divergence_names_the_setting(exact):
    hvp, _, hessian, _, _ = exact
    v = torch.randn(1, hessian.shape[0])
    with pytest.raises(DatablameError, match=r"LiSSA diverged.*--damping"):
        lissa(hvp, v, LissaConfig(damping=0.5, scale=1e-3, depth=200, batch_size=None))
