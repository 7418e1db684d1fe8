"""Heads fitted on fixed features: the L2-regularised softmax head (the representer refit, detection's
cross-validated linear heads) and a one-hidden-layer MLP (detection's cross-validated MLP heads).

The softmax head's design ``[f, 1]`` (a constant feature for the bias) makes the head one (K, h+1) matrix W, and
the objective (1/n) Σ_i CE(W f̃_i, y_i) + λ‖W‖² (nats) is smooth and strictly convex: L-BFGS reaches its unique
minimum.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def with_bias(features: Tensor) -> Tensor:
    """(n, h) → (n, h+1): the features with a constant 1 appended (the bias's feature)."""
    return torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)], 1)


def head_theta(head: nn.Linear) -> Tensor:
    """(K, h+1) float64 [W | b] of a linear head, on the CPU: the matrix :func:`with_bias` features multiply."""
    return torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).double().cpu()


def fit_softmax_head(features: Tensor, labels: Tensor, num_classes: int, lam: float = 1e-3, max_iter: int = 200,
                     init: Tensor | None = None, tolerance_grad: float = 1e-9, tolerance_change: float = 1e-12,
                     history_size: int = 20) -> Tensor:
    """(K, h+1) float64 weights (last column the bias) minimising mean cross-entropy + lam·‖W‖² by L-BFGS.

    features: (n, h+1) float64 with a constant 1 in the last column (:func:`with_bias`); labels: (n,) int64;
    init: (K, h+1) starting weights (zeros by default). The tolerances and history are L-BFGS's own.
    """
    w = (torch.zeros(num_classes, features.shape[1], dtype=torch.float64) if init is None
         else init.detach().clone().double()).requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, history_size=history_size,
                            line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(features @ w.T, labels) + lam * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return w.detach()


MLP_HIDDEN = 256
"""Hidden units of :func:`fit_mlp_head` (the CV-loss MLP of Chong, Hong & Manning 2022: one layer of 256)."""


def fit_mlp_head(features: Tensor, labels: Tensor, num_classes: int, seed: int = 0, hidden: int = MLP_HIDDEN,
                 lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 200, max_epochs: int = 200,
                 patience: int = 10, check_every: int = 50) -> nn.Module:
    """A one-hidden-layer ReLU MLP (h → ``hidden`` → K) in eval mode, fitted by Adam on minibatches, with early
    stopping: a stratified tenth of the examples is held out, its accuracy checked at the end of every epoch and
    every ``check_every`` steps within one, and training stops after ``patience`` checks without a better one;
    the weights of the best check are kept (on up to 10,000 examples, one check an epoch: scikit-learn's
    ``MLPClassifier(early_stopping=True)``; on more, checks within the epoch stop a long epoch's waste). Seeded:
    same seed, same weights.

    features: (n, h) float tensor on the device to fit on, standardised by the caller; labels: (n,) int64.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y = labels.to(features.device)
    rng = np.random.default_rng(seed)
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(labels).tolist():  # a stratified tenth, at least one of a class with two or more
        members = torch.nonzero(labels.cpu() == c).flatten().numpy()
        held[rng.permutation(members)[:len(members) // 10 or int(len(members) > 1)]] = True
    held = held.to(features.device)
    x_fit, y_fit, x_held, y_held = features[~held], y[~held], features[held], y[held]
    net = nn.Sequential(nn.Linear(features.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    net.to(device=features.device, dtype=features.dtype)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, waited = -1.0, None, 0
    for _ in range(max_epochs):
        order = torch.randperm(len(y_fit), generator=generator).to(features.device)
        starts = range(0, len(order), batch_size)
        for step, start in enumerate(starts, 1):
            net.train()
            rows = order[start:start + batch_size]
            opt.zero_grad()
            F.cross_entropy(net(x_fit[rows]), y_fit[rows]).backward()
            opt.step()
            if step % check_every and step != len(starts):
                continue
            net.eval()
            with torch.no_grad():
                accuracy = (net(x_held).argmax(-1) == y_held).double().mean().item() if len(y_held) else 0.0
            if best_state is None or accuracy > best:
                best, best_state, waited = accuracy, {k: v.clone() for k, v in net.state_dict().items()}, 0
            else:
                waited += 1
                if waited >= patience:
                    net.load_state_dict(best_state)
                    return net.eval()
    net.load_state_dict(best_state)
    return net.eval()
