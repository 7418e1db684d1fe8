"""Per-example gradients over a chosen parameter subset, batched with ``torch.func.vmap``.

Gradients are flattened in the order of :func:`select_params` and returned as (b, p) float32 tensors, where p
is the number of selected parameters. What is differentiated is each example's cross-entropy (nats) unless an
``objective`` is given: any :data:`Objective`, a per-example scalar function of the logits and a label (TRAK's
margin, :func:`.trak.margin`).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from .errors import DatablameError
from .task import Batch, Task, model_device, to_device

HEAD = "head"
LAST_LAYER = "last-layer"
SHORTCUTS = {HEAD: "the classification head", LAST_LAYER: "the classification head + the last encoder layer"}
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
Objective = Callable[[Tensor, Tensor], Tensor]
"""(b, K) logits, (b,) labels → (b,) per-example scalars to differentiate (like :meth:`.task.Task.loss`)."""


def select_params(model: nn.Module, task: Task, patterns: Sequence[str] | None = None) -> list[str]:
    """Names of the parameters to differentiate, in the model's order.

    ``patterns``: globs on parameter names (``classifier.*``, ``*.layer.5.*``) or the shortcuts ``head`` and
    ``last-layer`` (head + the highest-numbered encoder layer). None or empty: every trainable parameter.
    """
    named = [(n, p) for n, p in model.named_parameters()]
    if not patterns:
        chosen = [n for n, p in named if p.requires_grad]
    else:
        head_prefix = task.head_name + "."
        last = max((int(m.group(1)) for n, _ in named if (m := _LAYER_INDEX.search(n))), default=None)
        chosen = []
        for n, _ in named:
            for pat in patterns:
                if pat in (HEAD, LAST_LAYER) and n.startswith(head_prefix):
                    hit = True
                elif pat == LAST_LAYER:
                    m = _LAYER_INDEX.search(n)
                    hit = m is not None and last is not None and int(m.group(1)) == last
                else:
                    hit = fnmatch.fnmatchcase(n, pat)
                if hit:
                    chosen.append(n)
                    break
    if not chosen:
        raise DatablameError(f"--params {','.join(patterns or [])!r} matches no parameter of the model",
                             f"use globs on parameter names such as '{named[-1][0] if named else 'classifier.*'}', "
                             f"or the shortcuts {', '.join(SHORTCUTS)}")
    return chosen


def num_params(model: nn.Module, names: Sequence[str]) -> int:
    """p: the total number of entries of the named parameters."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def per_example_grads(
    task: Task, model: nn.Module, batch: Batch, labels: Tensor, names: Sequence[str], chunk_size: int | None = None,
    objective: Objective | None = None,
) -> Tensor:
    """(b, p) float32: row i is the gradient of example i's cross-entropy loss (nats), or of ``objective``,
    w.r.t. the named parameters.

    The model is evaluated in eval mode (no dropout); other parameters and buffers are held fixed. ``chunk_size``
    bounds how many examples ``vmap`` runs at once. Over head parameters alone, :func:`head_grads` on the
    penultimate features gives the same rows many times faster (:class:`.gradients.HeadGradients` chooses it).
    """
    device = model_device(model)
    batch, labels = to_device(batch, device), labels.to(device)
    objective = objective or task.loss
    was_training = model.training
    model.eval()
    params, fixed = split_params(model, names)

    def loss_one(p: dict[str, Tensor], inputs: Batch, label: Tensor) -> Tensor:
        one = {k: v.unsqueeze(0) for k, v in inputs.items()}
        logits = task.functional_logits(model, {**fixed, **p}, one)
        return objective(logits, label.unsqueeze(0)).sum()

    try:
        g = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, batch, labels)
    finally:
        model.train(was_training)
    return torch.cat([g[n].reshape(labels.shape[0], -1) for n in names], dim=1).float()


def only_head(task: Task, names: Sequence[str]) -> bool:
    """Whether every named parameter belongs to the head (the layers below can then run once, frozen)."""
    return all(n.startswith(task.head_name + ".") for n in names)


def head_logits_fn(task: Task, model: nn.Module, names: Sequence[str]) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """f(params, features): (b, K) logits of the head on (b, h) features, with the named head parameters
    (keyed by their full names) taken from ``params`` and the head's other parameters held fixed."""
    head, prefix = task.head(model), task.head_name + "."
    fixed = {n: p.detach() for n, p in head.named_parameters() if prefix + n not in names}
    cut = len(prefix)
    return lambda params, f: torch.func.functional_call(head, {**fixed, **{n[cut:]: v for n, v in params.items()}},
                                                        (f,))


def head_grads(task: Task, model: nn.Module, features: Tensor, labels: Tensor, names: Sequence[str],
               chunk_size: int | None = None, objective: Objective | None = None) -> Tensor:
    """(b, p) float32 per-example gradients of the cross-entropy (nats), or of ``objective``, w.r.t. the named
    head parameters, from the examples' (b, h) penultimate features (e.g. read from
    :class:`.features.FeatureCache`) and (b,) labels."""
    labels = labels.to(features.device)
    logits_fn = head_logits_fn(task, model, names)
    objective = objective or task.loss

    def loss_one(p: dict[str, Tensor], f: Tensor, label: Tensor) -> Tensor:
        return objective(logits_fn(p, f.unsqueeze(0)), label.unsqueeze(0)).sum()

    params, _ = split_params(model, names)
    g = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, features.detach(), labels)
    return torch.cat([g[n].reshape(labels.shape[0], -1) for n in names], dim=1).float()


def split_params(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(selected, fixed): detached tensors of the named parameters, and of every other parameter and buffer."""
    selected = set(names)
    params = {n: p.detach() for n, p in model.named_parameters() if n in selected}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in selected}
    fixed.update(dict(model.named_buffers()))
    return params, fixed
