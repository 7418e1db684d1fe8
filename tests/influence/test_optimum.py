"""Influence at the damped optimum: the head moved to the minimiser of mean CE + (λ/2)‖θ‖², against a minimiser
found independently (L-BFGS from zeros) and against scores from autograd's Hessian and per-example gradients there."""

import pytest
import torch
from brute import QUERIES, loop_grads
from test_exact_curvature import autograd_hessian

from datablame.influence import methods
from datablame.influence.build import MethodSettings, build_method
from datablame.influence.errors import DatablameError
from datablame.influence.grads import num_params, select_params
from datablame.influence.heads import fit_softmax_head, with_bias
from datablame.influence.lissa import LissaConfig
from datablame.influence.methods import InfluenceFunctions, compute_train_vectors, scores
from datablame.influence.sketch import Identity
from datablame.influence.task import logits_and_features_of


def test_influence_at_the_damped_optimum_equals_brute_force(trained, tiny_examples, monkeypatch):
    models, _, task = trained
    model = models[-1]
    names = select_params(model, task, ["head"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = InfluenceFunctions(task, model, names, Identity(num_params(model, names)), tiny_examples,
                                LissaConfig(damping=None), curvature="exact", at="optimum")
    v = torch.as_tensor(compute_train_vectors(method, tiny_examples))
    arrays = method.finalize(v)
    at = method.linearized
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the trained model is untouched
    assert at.get_submodule(task.head_name) is not task.head(model)
    # λ: the mean eigenvalue of the Hessian at the trained head, and the exact curvature's automatic damping
    trained_hessian = autograd_hessian(task, model, names, tiny_examples)
    lam = float(torch.trace(trained_hessian)) / len(trained_hessian)
    assert method.optimum.lam == pytest.approx(lam, rel=1e-4)
    assert method.curvature.damping_for("hessian") == method.optimum.lam
    assert method.optimum.grad_max < 1e-9 and method.optimum.moved > 0.01 * method.optimum.norm
    # θ*: the minimiser of mean CE + (λ/2)‖θ‖², as L-BFGS finds it from zeros
    x = with_bias(logits_and_features_of(task, model, tiny_examples)[1].double())
    y = torch.as_tensor(tiny_examples.labels)
    reference = fit_softmax_head(x, y, task.head(model).out_features, method.optimum.lam / 2,
                                 max_iter=2000)
    head = task.head(at)
    theta = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).double()
    assert float((theta - reference).abs().max()) < 1e-4 * float(reference.abs().max())
    # scores: g_q(θ*)ᵀ (H(θ*) + λI)⁻¹ g_i(θ*), for the trained model's predicted labels
    got, q = scores(method, v, QUERIES)
    with torch.no_grad():
        assert torch.equal(q.predictions, task.logits(model.eval(), task.encode(QUERIES)).argmax(-1))
    hessian = autograd_hessian(task, at, names, tiny_examples)
    assert torch.allclose(torch.as_tensor(arrays["hessian"]), hessian, rtol=1e-3, atol=1e-5)
    gt = loop_grads(task, at, tiny_examples.texts, tiny_examples.labels, names).double()
    gq = loop_grads(task, at, QUERIES, q.predictions.tolist(), names).double()
    ref = gq @ torch.linalg.solve(hessian + lam * torch.eye(len(hessian), dtype=hessian.dtype), gt.T)
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-3
    # a query process takes θ* and λ from the stored arrays, without fitting again
    monkeypatch.setattr(methods, "damped_optimum", lambda *a, **k: pytest.fail("fitted the head again"))
    fresh = InfluenceFunctions(task, model, names, Identity(num_params(model, names)), tiny_examples,
                               LissaConfig(damping=None), curvature="exact", at="optimum")
    fresh.use_finalized(arrays)
    assert torch.allclose(fresh.query_vectors(QUERIES).vectors, q.vectors)


def test_the_optimum_is_asked_for_and_only_for_a_head(trained_workdir):
    default = build_method(trained_workdir, "influence", MethodSettings.faithful(params=["head"], device="cpu"))
    assert default.method.at == "checkpoint" and "at" not in default.key  # keys of indexes built before stay valid
    head = build_method(trained_workdir, "influence", MethodSettings.faithful(params=["head"], at="optimum",
                                                                             device="cpu"))
    assert head.method.at == "optimum" and head.key["at"] == "optimum"
    with pytest.raises(DatablameError, match="weight and bias of a linear softmax head") as info:
        build_method(trained_workdir, "influence", MethodSettings.faithful(at="optimum", device="cpu"))
    assert "--at checkpoint" in info.value.hint
