"""TRAK against brute force: margin gradients, scores and self-influence from explicit per-example margin
gradients, out-to-loss weights and kernels; indexed and explained end to end; read back by a new process."""

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from datablame.index.explain import Explainer, index_workdir
from datablame.index.vectors import VectorStore
from datablame.influence.build import MethodSettings, build_method
from datablame.influence.features import FeatureCache
from datablame.influence.grads import head_grads, num_params, per_example_grads, select_params
from datablame.influence.methods import compute_train_vectors
from datablame.influence.sketch import CountSketch, Identity
from datablame.influence.trak import DAMPING, Q_FLOOR, TRAK, margin, out_to_loss

from brute import QUERIES

HEAD = MethodSettings(params=["head"], dim=256, projection="identity", device="cpu")  # 99 head parameters, unprojected


def loop_margin(task, model, texts, labels, names):
    """(n, p) float64 gradients of log p_y − log(1 − p_y) and (n,) float64 1 − p_y = Σ_{j≠y} p_j, one unpadded
    forward/backward per example, from log_softmax (not the code under test)."""
    params = dict(model.named_parameters())
    grads, q = [], []
    for text, label in zip(texts, labels):
        log_p = task.logits(model, task.encode([text]))[0].double().log_softmax(-1)
        log_rest = torch.cat([log_p[:int(label)], log_p[int(label) + 1:]]).logsumexp(0)  # log(1 − p_y)
        f = log_p[int(label)] - log_rest
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, [params[n] for n in names])]))
        q.append(float(log_rest.detach().exp()))
    return torch.stack(grads).double(), torch.tensor(q, dtype=torch.float64)


@pytest.fixture(scope="module")
def workdir(trained_workdir, tmp_path_factory):
    """A copy of the trained workdir (3 checkpoints), so that the feature cache written here stays here."""
    wd = tmp_path_factory.mktemp("trak") / "wd"
    shutil.copytree(trained_workdir, wd)
    return wd


def explicit_trak(models, task, names, train, project=lambda g: g):
    """TRAK written out in numpy from :func:`loop_margin` (projected by ``project``, (n, p) → (n, k)): per
    checkpoint Φ_m (n, k) and Φ_m(q) (b, k) for :data:`QUERIES`, Q (n,), K_m^{-1}; τ (b, n), self-influence
    (n,), the vectors v (n, M·k) and u (b, M·k), and the last checkpoint's predictions ŷ."""
    with torch.no_grad():
        preds = [int(task.logits(models[-1], task.encode([t]))[0].argmax()) for t in QUERIES]
    phis, phis_q, qs, inverses = [], [], [], []
    for model in models:
        phi, q = loop_margin(task, model, train.texts, train.labels, names)
        phis.append(project(phi).double().numpy())
        qs.append(q.numpy())
        phis_q.append(project(loop_margin(task, model, QUERIES, preds, names)[0]).double().numpy())
        inverses.append(np.linalg.inv(phis[-1].T @ phis[-1] + DAMPING * np.eye(phis[-1].shape[1])))
    m = len(models)
    weights = np.mean(qs, axis=0)
    assert weights.min() > Q_FLOOR  # the floor is inactive here: these are TRAK's own weights
    tau = weights[None, :] * sum(pq @ inv @ p.T for pq, inv, p in zip(phis_q, inverses, phis)) / m
    self_inf = weights * sum(np.einsum("ni,ij,nj->n", p, inv, p) for p, inv in zip(phis, inverses)) / m
    v = weights[:, None] * np.concatenate(phis, axis=1)
    u = np.concatenate([pq @ inv for pq, inv in zip(phis_q, inverses)], axis=1) / m  # K⁻¹ is symmetric
    return {"tau": tau, "self_influence": self_inf, "weights": weights, "inverses": np.stack(inverses), "v": v,
            "u": u, "preds": preds}


@pytest.fixture(scope="module")
def explicit(trained, tiny_examples):
    """:func:`explicit_trak` over the head's 99 parameters, unprojected, on the 48 training examples."""
    models, _, task = trained
    return explicit_trak(models, task, select_params(models[-1], task, ["head"]), tiny_examples)


def assert_close_scores(got, tau):
    rel = np.linalg.norm(got - tau) / np.linalg.norm(tau)
    assert rel < 1e-4, rel
    np.testing.assert_allclose(got, tau, rtol=1e-3, atol=1e-4 * np.abs(tau).max())


def test_margin_is_the_log_odds():
    logits = torch.tensor([[2.0, -1.0, 0.5], [60.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    p = logits.softmax(-1)[:, 0]
    assert torch.allclose(margin(logits, labels)[:1], (p.log() - (1 - p).log())[:1], rtol=1e-12)
    assert torch.allclose(margin(logits, labels)[1:], torch.tensor([60 - np.log(2)], dtype=torch.float64))
    # 1 − p_y without cancellation, where 1 − softmax rounds to 0
    assert torch.allclose(out_to_loss(logits, labels), torch.tensor([1 - float(p[0]), 2 * np.exp(-60)],
                                                                    dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("params", [None, ["head"]])
def test_margin_grads_equal_loop(trained, tiny_examples, params):
    """Through the whole model (vmap), and on the head from cached features, equal to one backward each."""
    models, _, task = trained
    model = models[1]
    names = select_params(model, task, params)
    ex = tiny_examples.subset(range(6))
    labels = torch.as_tensor(ex.labels)
    ref, _ = loop_margin(task, model, ex.texts, ex.labels, names)
    got = [per_example_grads(task, model, task.encode(ex.texts), labels, names, objective=margin)]
    if params == ["head"]:
        cached = FeatureCache(tiny_examples).rows(task, model, ex)
        got.append(head_grads(task, model, cached, labels, names, objective=margin))
    for g in got:
        assert torch.allclose(g.double(), ref, atol=1e-6, rtol=1e-4), (g.double() - ref).abs().max()
    assert ref.norm() > 0


def test_scores_equal_explicit_trak(workdir, trained, tiny_examples, explicit):
    """build_method + compute_train_vectors + finalize + query_vectors give <v_i, u_q> = τ(q, i)."""
    method = build_method(workdir, "trak", HEAD).method
    assert isinstance(method, TRAK) and method.dim == 3 * 99
    v = compute_train_vectors(method, tiny_examples, batch_size=16)
    arrays = method.finalize(torch.from_numpy(v))
    np.testing.assert_allclose(arrays["weights"], explicit["weights"], rtol=1e-5)
    np.testing.assert_allclose(v, explicit["v"], rtol=1e-4, atol=1e-4 * np.abs(explicit["v"]).max())
    inverses = explicit["inverses"]
    scale = np.abs(inverses).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(arrays["inverse_kernels"] / scale, inverses / scale, atol=1e-4)
    q = method.query_vectors(QUERIES)
    assert q.predictions.tolist() == explicit["preds"]
    assert_close_scores(q.vectors.double().numpy() @ v.astype(np.float64).T, explicit["tau"])
    si = method.self_influence(torch.from_numpy(v), torch.as_tensor(tiny_examples.labels)).double().numpy()
    np.testing.assert_allclose(si, explicit["self_influence"], rtol=1e-4)
    # training vectors as queries: (1/M) concat_m K_m⁻¹ v_m, Q_i times their query vectors (same neighbours)
    like = method.query_like(torch.from_numpy(v[:3])).double().numpy()
    stored = arrays["inverse_kernels"]
    ref_like = np.concatenate([(v[:3, m * 99:(m + 1) * 99] @ stored[m]) for m in range(3)], axis=1) / 3
    np.testing.assert_allclose(like, ref_like, rtol=1e-4, atol=1e-6 * np.abs(ref_like).max())


def test_projected_whole_model_path(trained, tiny_examples):
    """Over the last encoder layer + head (gradients through the model, no cached features), sketched to k = 32:
    the scores and self-influence of TRAK on the sketches P ∇f of one-at-a-time margin gradients."""
    models, _, task = trained
    names = select_params(models[-1], task, ["last-layer"])
    train = tiny_examples.subset(range(16))
    projector = CountSketch(num_params(models[-1], names), 32, seed=0)
    method = TRAK(task, models, names, projector, train)
    v = compute_train_vectors(method, train, batch_size=8)
    method.finalize(torch.from_numpy(v))
    ref = explicit_trak(models, task, names, train, projector)
    np.testing.assert_allclose(v, ref["v"], rtol=1e-3, atol=1e-4 * np.abs(ref["v"]).max())
    q = method.query_vectors(QUERIES)
    assert q.predictions.tolist() == ref["preds"]
    assert_close_scores(q.vectors.double().numpy() @ v.astype(np.float64).T, ref["tau"])
    si = method.self_influence(torch.from_numpy(v), torch.as_tensor(train.labels)).double().numpy()
    np.testing.assert_allclose(si, ref["self_influence"], rtol=1e-4)


def test_floored_weights_keep_the_kernel_exact(trained, tiny_examples):
    """A head scaled ×12 fits most training examples with 1 − p_y < Q_FLOOR: their v_i = Q_FLOOR · φ_i and the
    kernel recovered from the stored rows is still Φᵀ Φ + λI of the unweighted margin gradients."""
    models, _, task = trained
    model = copy.deepcopy(models[-1])
    head = task.head(model)
    with torch.no_grad():
        head.weight.mul_(12)
        head.bias.mul_(12)
    names = select_params(model, task, ["head"])
    method = TRAK(task, [model], names, Identity(99), tiny_examples)
    v = compute_train_vectors(method, tiny_examples, batch_size=16)
    phi, q = loop_margin(task, model, tiny_examples.texts, tiny_examples.labels, names)
    assert (q < Q_FLOOR).sum() >= 10 and (q > Q_FLOOR).any()
    weights = np.maximum(q.numpy(), Q_FLOOR)
    np.testing.assert_allclose(v, weights[:, None] * phi.numpy(), rtol=1e-4, atol=1e-5 * np.abs(v).max())
    arrays = method.finalize(torch.from_numpy(v))
    np.testing.assert_allclose(arrays["weights"], weights, rtol=1e-5)
    kernel = phi.numpy().T @ phi.numpy() + DAMPING * np.eye(99)
    np.testing.assert_allclose(arrays["inverse_kernels"][0] @ kernel, np.eye(99), atol=1e-3)


@pytest.fixture(scope="module")
def indexed(workdir):
    index_workdir(workdir, "trak", HEAD)
    return workdir


def assert_top(result, row, top):
    """Supporting = the ``top`` highest of ``row``, opposing = its lowest, same scores (ties may swap ids)."""
    best, worst = np.sort(row)[::-1][:top], np.sort(row)[:top]
    tol = {"rtol": 1e-3, "atol": 1e-5 * np.abs(row).max()}
    np.testing.assert_allclose([n.score for n in result.supporting], best, **tol)
    np.testing.assert_allclose([n.score for n in result.opposing], worst, **tol)
    np.testing.assert_allclose(row[[n.id for n in result.supporting]], best, **tol)
    np.testing.assert_allclose(row[[n.id for n in result.opposing]], worst, **tol)


@pytest.mark.parametrize("scoring", ["raw", "cosine"])
def test_explain_equals_brute_force(indexed, tiny_examples, explicit, scoring):
    results = Explainer(indexed, "trak", scoring, device="cpu", cache=False).explain(QUERIES, top=5)
    ref = explicit["tau"]
    if scoring == "cosine":
        ref = ref / np.linalg.norm(explicit["u"], axis=1)[:, None] / np.linalg.norm(explicit["v"], axis=1)[None, :]
    for result, row, pred in zip(results, ref, explicit["preds"]):
        assert result.prediction["label"] == tiny_examples.label_names[pred]
        assert_top(result, row, 5)
    stored = VectorStore(indexed / "vectors" / "trak").self_influence()
    np.testing.assert_allclose(stored, explicit["self_influence"], rtol=1e-4)


SCRIPT = """
import json, sys
from datablame.index.explain import Explainer
from datablame.influence.trak import TRAK

def refuse(*_):
    raise AssertionError("the kernels must be read from disk")

TRAK.finalize = TRAK.out_to_loss_weights = refuse
[result] = Explainer(sys.argv[1], "trak", "raw", device="cpu", cache=False).explain([sys.argv[2]], top=5)
print(json.dumps([[n.id, n.score] for n in result.supporting + result.opposing]))
"""


def test_a_copy_is_explained_by_a_new_process(indexed, tmp_path, explicit):
    """The finalized kernels and weights travel with the workdir: a new process reads them (finalize would
    raise there) and explains like brute force."""
    copy_wd = tmp_path / "moved"
    shutil.copytree(indexed, copy_wd)
    fresh = Explainer(copy_wd, "trak", "raw", device="cpu", cache=False).method
    np.testing.assert_array_equal(fresh.inverse_kernels.numpy(),
                                  np.load(copy_wd / "vectors" / "trak" / "final-inverse_kernels.npy"))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(copy_wd), QUERIES[0]], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.splitlines()[-1])
    row = explicit["tau"][0]
    scores = np.array([s for _, s in rows])
    np.testing.assert_allclose(scores, np.concatenate([np.sort(row)[::-1][:5], np.sort(row)[:5]]), rtol=1e-3,
                               atol=1e-5 * np.abs(row).max())
    np.testing.assert_allclose(row[[i for i, _ in rows]], scores, rtol=1e-3, atol=1e-5 * np.abs(row).max())
