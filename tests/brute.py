"""Brute-force references shared by the tests: one backward pass per example, exact Hessians."""

import torch

QUERIES = ["goal team the very", "soup bread and my", "code phone today", "match pasta app"]


def loop_grads(task, model, texts, labels, names):
    """(n, p) per-example gradients from one unpadded forward/backward per example."""
    params = dict(model.named_parameters())
    rows = []
    for text, label in zip(texts, labels):
        for p in params.values():
            p.requires_grad_(True)
        loss = task.loss(task.logits(model, task.encode([text])), torch.tensor([int(label)])).sum()
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows).detach()


def exact_hessian(task, model, names, examples):
    """(p, p) float64 Hessian of the mean training loss, built column by column from exact HVPs."""
    from datablame.influence.grads import num_params
    from datablame.influence.lissa import HessianVectorProducts

    hvp = HessianVectorProducts(task, model, names, examples, batch_size=None)
    p = num_params(model, names)
    h = hvp(torch.eye(p)).double()
    return (h + h.T) / 2
