"""Brute-force references shared by the tests: one backward pass per example, exact Hessians, a head retrained
one AdamW step at a time."""

import copy
import math

import numpy as np
import torch

from datablame.influence.train import learning_rate

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


def replay(task, init, x, y, rows, s, paired: bool = False, on_epoch=None):
    """train()'s --freeze-encoder head recipe (settings ``s``) on just ``rows`` (paired: the run on all rows, the
    others' losses left out of each batch's mean), with torch's own AdamW, one step at a time: the brute force
    retrain_heads must match. ``on_epoch(head)`` sees the head at the end of every epoch."""
    head = copy.deepcopy(init)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=0.01)
    kept = np.isin(np.arange(len(y)), rows)
    xs, ys, kept = (x, y, kept) if paired else (x[rows], y[rows], kept[rows])
    per_epoch = math.ceil(len(ys) / s.batch_size)
    gen, step = torch.Generator().manual_seed(s.seed), 0
    for _ in range(s.epochs):
        order = torch.randperm(len(ys), generator=gen).numpy()
        for position in range(per_epoch):
            batch = order[position * s.batch_size:(position + 1) * s.batch_size]
            batch = batch[kept[batch]]
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, s.epochs * per_epoch, s.lr)
            loss = task.loss(head(xs[batch]), ys[batch]).sum() / max(1, len(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if on_epoch is not None:
            on_epoch(head)
    return head
