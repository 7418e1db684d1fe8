"""The three methods against brute force: exact scores, sketch error, signs, the representer decomposition."""

import math

import numpy as np
import pytest
import torch

from datablame.influence.grads import num_params, select_params
from datablame.influence.lissa import LissaConfig
from datablame.influence.methods import InfluenceFunctions, Representer, TracIn, compute_train_vectors, scores
from datablame.influence.sketch import CountSketch, Identity

from brute import QUERIES, exact_hessian, loop_grads


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def exact_tracin(models, lrs, task, names, train, queries, preds):
    total = 0
    for model, lr in zip(models, lrs):
        gt = loop_grads(task, model, train.texts, train.labels, names)
        gq = loop_grads(task, model, queries, preds, names)
        total = total + lr * gq @ gt.T
    return total


def test_tracin_exact_equals_brute_force(trained, tiny_examples):
    models, lrs, task = trained
    names = select_params(models[-1], task, None)
    p = num_params(models[-1], names)
    method = TracIn(task, list(zip(models, lrs)), names, Identity(p))
    train = tiny_examples.subset(range(10))
    got, q = scores(method, compute_train_vectors(method, train, batch_size=4), QUERIES)
    ref = exact_tracin(models, lrs, task, names, train, QUERIES, q.predictions.tolist())
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    # self-influence is sum_c lr_c |g_c|^2
    v = torch.as_tensor(compute_train_vectors(method, train))
    si = method.self_influence(v, torch.as_tensor(train.labels))
    ref_si = sum(lr * loop_grads(task, m, train.texts, train.labels, names).pow(2).sum(1) for m, lr in zip(models, lrs))
    assert torch.allclose(si, ref_si, rtol=1e-4)


def test_tracin_sketch_within_jl_error(trained, tiny_examples):
    models, lrs, task = trained
    names = select_params(models[-1], task, ["last-layer"])
    p = num_params(models[-1], names)
    k = 256
    method = TracIn(task, list(zip(models, lrs)), names, CountSketch(p, k, seed=0))
    got, q = scores(method, compute_train_vectors(method, tiny_examples, batch_size=16), QUERIES)
    ref = exact_tracin(models, lrs, task, names, tiny_examples, QUERIES, q.predictions.tolist())
    # each checkpoint's term errs by at most ~sqrt(2/k) |g||g'| (one standard deviation); bound the sum
    norm = 0
    for model, lr in zip(models, lrs):
        gt = loop_grads(task, model, tiny_examples.texts, tiny_examples.labels, names).norm(dim=1)
        gq = loop_grads(task, model, QUERIES, q.predictions.tolist(), names).norm(dim=1)
        norm = norm + lr * gq[:, None] * gt[None, :]
    err = (got - ref) / norm
    sigma = math.sqrt(2 / k)
    assert err.pow(2).mean().sqrt() < 1.2 * sigma, err.pow(2).mean().sqrt()
    assert err.abs().max() < 5 * sigma
    assert spearman(got.flatten().numpy(), ref.flatten().numpy()) > 0.9


def test_tracin_sign_means_support(trained, tiny_examples):
    """A small SGD step on a training example lowers the query's loss by about lr * score: positive supports."""
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, ["last-layer"])
    p = num_params(model, names)
    method = TracIn(task, [(model, 1.0)], names, Identity(p))
    query = QUERIES[:1]
    s, q = scores(method, method.train_vectors(tiny_examples.subset(range(8))), query)
    params = dict(model.named_parameters())
    eta = 1e-3

    def query_loss():
        with torch.no_grad():
            return float(task.loss(task.logits(model, task.encode(query)), q.predictions).sum())

    base = query_loss()
    grads = method.train_vectors(tiny_examples.subset(range(8)))
    for i in range(8):
        backup = {n: params[n].detach().clone() for n in names}
        offset = 0
        with torch.no_grad():
            for n in names:
                size = params[n].numel()
                params[n] -= eta * grads[i, offset:offset + size].reshape(params[n].shape)
                offset += size
        change = query_loss() - base
        with torch.no_grad():
            for n in names:
                params[n].copy_(backup[n])
        assert math.isclose(change, -eta * float(s[0, i]), rel_tol=0.1, abs_tol=1e-7), (i, change, float(s[0, i]))


@pytest.fixture(scope="module")
def head_influence(trained, tiny_examples):
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, ["head"])
    p = num_params(model, names)
    config = LissaConfig(damping=0.1, depth=1500, batch_size=None)  # condition number of H + λI about 20
    method = InfluenceFunctions(task, model, names, Identity(p), tiny_examples, config)
    return method, exact_hessian(task, model, names, tiny_examples), names


def test_influence_exact_equals_inverse_hessian(trained, tiny_examples, head_influence):
    models, _, task = trained
    method, hessian, names = head_influence
    got, q = scores(method, compute_train_vectors(method, tiny_examples), QUERIES)
    gt = loop_grads(task, models[-1], tiny_examples.texts, tiny_examples.labels, names).double()
    gq = loop_grads(task, models[-1], QUERIES, q.predictions.tolist(), names).double()
    damped = hessian + 0.1 * torch.eye(hessian.shape[0], dtype=hessian.dtype)
    ref = gq @ torch.linalg.solve(damped, gt.T)
    rel = float((got.double() - ref).norm() / ref.norm())
    assert rel < 1e-3, rel
    assert method.last_report.converged


def test_influence_self_influence_approximation(trained, tiny_examples, head_influence):
    """The sketch-space damped Gauss-Newton ranks examples like the exact g^T (H + λI)^{-1} g."""
    models, _, task = trained
    method, hessian, names = head_influence
    v = torch.as_tensor(compute_train_vectors(method, tiny_examples))
    approx = method.self_influence(v, torch.as_tensor(tiny_examples.labels)).numpy()
    g = v.double()
    damped = hessian + 0.1 * torch.eye(hessian.shape[0], dtype=hessian.dtype)
    exact = (g * torch.linalg.solve(damped, g.T).T).sum(1).numpy()
    assert spearman(approx, exact) > 0.8, spearman(approx, exact)


def test_representer_decomposition_reproduces_logits(trained, tiny_examples):
    models, _, task = trained
    method = Representer(task, models[-1], lam=1e-2)
    report = method.fit(tiny_examples)
    assert report.grad_norm < 1e-6
    assert report.accuracy >= report.original_accuracy - 0.1
    v = torch.as_tensor(compute_train_vectors(method, tiny_examples))
    q = method.query_vectors(QUERIES)
    s = q.vectors @ v.T  # (queries, n): representer values for the predicted class
    logits = method.refit_logits(QUERIES)
    predicted = logits[torch.arange(len(QUERIES)), q.predictions]
    assert torch.allclose(s.sum(1).double(), predicted, rtol=1e-5, atol=1e-5)  # float32 vectors
    # every class, not only the predicted one
    feats = method.features(QUERIES)[1]
    alphas = method.alphas(method.features(tiny_examples.texts)[1], torch.as_tensor(tiny_examples.labels))
    per_class = torch.einsum("nk,nh,qh->qk", alphas, method.features(tiny_examples.texts)[1], feats)
    # Σ_i α_i f̃_iᵀ − W = −∇/(2λ) exactly, so the gap is bounded by the refit's final gradient norm
    bound = report.grad_norm / (2 * method.lam) * feats.norm(dim=1, keepdim=True) + 1e-12
    assert ((per_class - logits).abs() <= bound).all()
    si = method.self_influence(v, torch.as_tensor(tiny_examples.labels))
    assert torch.allclose(si.double(), alphas[torch.arange(len(tiny_examples)), torch.as_tensor(tiny_examples.labels)].abs(),
                          rtol=1e-5)


def test_deterministic_vectors(trained, tiny_examples):
    models, lrs, task = trained
    names = select_params(models[-1], task, ["last-layer"])
    p = num_params(models[-1], names)

    def run(seed):
        return compute_train_vectors(TracIn(task, list(zip(models, lrs)), names, CountSketch(p, 32, seed=seed)),
                                     tiny_examples, batch_size=8)

    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
