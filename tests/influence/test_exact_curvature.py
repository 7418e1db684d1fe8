"""Influence functions with the exact curvature: u_q = (H + λI)⁻¹ g(z_q) with H the explicit Hessian of the mean
training loss over the head, against a Hessian from torch.autograd.functional through the whole model."""

import pytest
import torch
from brute import QUERIES, loop_grads

from datablame.influence.build import MethodSettings, build_method
from datablame.influence.errors import DatablameError
from datablame.influence.grads import num_params, select_params
from datablame.influence.lissa import LissaConfig
from datablame.influence.methods import InfluenceFunctions, compute_train_vectors, scores
from datablame.influence.sketch import Identity, SoftmaxBasis

DAMPING = 1e-3


def autograd_hessian(task, model, names, examples):
    """(p, p) Hessian (float32, returned as float64) of the mean loss over ``names``, by
    torch.autograd.functional.hessian through the whole model on one padded batch."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    batch = task.encode(examples.texts)
    labels = torch.as_tensor(examples.labels)
    fixed = {n: p.detach() for n, p in params.items()}

    def mean_loss(flat):
        chunks, offset = {}, 0
        for n, shape in zip(names, shapes):
            chunks[n] = flat[offset:offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return task.loss(task.functional_logits(model, {**fixed, **chunks}, batch), labels).mean()

    model.eval()
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(mean_loss, flat).double()


def test_exact_curvature_equals_the_explicit_damped_inverse(trained, tiny_examples):
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, ["head"])
    method = InfluenceFunctions(task, model, names, Identity(num_params(model, names)), tiny_examples,
                                LissaConfig(damping=DAMPING), curvature="exact")
    v = torch.as_tensor(compute_train_vectors(method, tiny_examples))
    arrays = method.finalize(v)
    hessian = autograd_hessian(task, model, names, tiny_examples)
    assert torch.allclose(torch.as_tensor(arrays["hessian"]), hessian, rtol=1e-3, atol=1e-5)
    got, q = scores(method, v, QUERIES)
    gt = loop_grads(task, model, tiny_examples.texts, tiny_examples.labels, names).double()
    gq = loop_grads(task, model, QUERIES, q.predictions.tolist(), names).double()
    ref = gq @ torch.linalg.solve(hessian + DAMPING * torch.eye(len(hessian), dtype=hessian.dtype), gt.T)
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-3
    # a query process gets the same answer from the stored arrays
    fresh = InfluenceFunctions(task, model, names, Identity(num_params(model, names)), tiny_examples,
                               LissaConfig(damping=DAMPING), curvature="exact")
    fresh.use_finalized(arrays)
    assert torch.allclose(fresh.query_vectors(QUERIES).vectors, q.vectors)


def test_exact_curvature_refuses_many_parameters(trained_workdir):
    with pytest.raises(DatablameError, match="at most .* selected parameters") as info:
        build_method(trained_workdir, "influence", MethodSettings(params=None, curvature="exact", device="cpu"))
    assert "--params head" in info.value.hint


def test_faithful_settings_choose_exact_for_a_head_and_the_sketch_beyond(trained_workdir):
    head = build_method(trained_workdir, "influence", MethodSettings.faithful(params=["head"], device="cpu"))
    method = head.method
    p, k = num_params(method.model, method.names), method.task.head(method.model).out_features
    assert method.query_curvature == "exact" and isinstance(method.projector, SoftmaxBasis)
    assert method.projector.out_dim == p * (k - 1) // k
    method.finalize(torch.as_tensor(compute_train_vectors(method, head.train)))
    assert method.damping(method.hessian) == pytest.approx(float(torch.trace(method.hessian)) / len(method.hessian))
    assert method.damping() == 0.01  # LiSSA's, when it answers
    everything = build_method(trained_workdir, "influence", MethodSettings.faithful(device="cpu")).method
    assert everything.query_curvature == "sketch" and everything.projector.out_dim == 2048  # influence's own k
    sketched = build_method(trained_workdir, "influence", MethodSettings.faithful(params=["head"], dim=32,
                                                                                     device="cpu")).method
    assert sketched.query_curvature == "sketch"  # the exact Hessian does not go with sketched vectors


def test_closed_form_head_hessian_equals_the_hessian_vector_products(trained, tiny_examples):
    """A linear head's closed-form Hessian, (1/n) Σ (diag p − p pᵀ) ⊗ [f, 1][f, 1]ᵀ in the gradients' order, is the
    one p Hessian-vector products build, for the whole head and for its weight alone."""
    models, _, task = trained
    model = models[-1]
    for patterns in (["head"], ["classifier.weight"]):
        names = select_params(model, task, patterns)
        method = InfluenceFunctions(task, model, names, Identity(num_params(model, names)), tiny_examples,
                                    LissaConfig(damping=DAMPING), curvature="exact")
        closed = method.gradients.loss_hessian(model, tiny_examples)
        method.curvature.closed_form = None  # the general route
        products = method.curvature.hessian()
        assert closed.shape == products.shape == (num_params(model, names),) * 2
        assert torch.allclose(closed, products, rtol=1e-5, atol=1e-7)
    everything = InfluenceFunctions(task, model, select_params(model, task, ["last-layer"]), Identity(1),
                                    tiny_examples, LissaConfig(damping=DAMPING), curvature="lissa")
    assert everything.gradients.loss_hessian(model, tiny_examples) is None  # not the head alone: no closed form


@pytest.mark.parametrize("name", ["influence", "tracin", "trak"])
def test_softmax_basis_keeps_every_score_of_exact_gradients(trained_workdir, name):
    """A linear head's exact gradients in its softmax basis ((K − 1)/K of the dimensions) give the scores, the
    self-influence and the training vectors as queries see them that unprojected gradients give."""
    texts = ["a fine film", "dull and slow"]
    got = {}
    for projection in ("countsketch", "identity"):  # the default projection leaves exact gradients in the basis
        built = build_method(trained_workdir, name, MethodSettings.faithful(params=["head"], projection=projection,
                                                                            device="cpu"))
        method = built.method
        vectors = torch.as_tensor(compute_train_vectors(method, built.train))
        if hasattr(method, "finalize"):
            method.finalize(vectors)
        queries = method.query_vectors(texts).vectors
        labels = torch.as_tensor(built.train.labels)
        got[projection] = (queries @ vectors.T, method.self_influence(vectors, labels), vectors.shape[1],
                           method.query_like(vectors[:3]) @ vectors.T if hasattr(method, "query_like") else None)
    (scores, own, dim, like), (scores_i, own_i, dim_i, like_i) = got["countsketch"], got["identity"]
    assert dim < dim_i
    assert torch.allclose(scores, scores_i, rtol=1e-4, atol=1e-5 * float(scores_i.abs().max()))
    assert torch.allclose(own, own_i, rtol=1e-4, atol=1e-5 * float(own_i.abs().max()))
    if like is not None:
        assert torch.allclose(like, like_i, rtol=1e-4, atol=1e-5 * float(like_i.abs().max()))
