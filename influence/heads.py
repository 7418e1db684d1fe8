"""The L2-regularised softmax head on fixed features: fitted by the representer refit and by detection's
cross-validated heads.

The design ``[f, 1]`` (a constant feature for the bias) makes the head one (K, h+1) matrix W, and the objective
(1/n) Σ_i CE(W f̃_i, y_i) + λ‖W‖² (nats) is smooth and strictly convex: L-BFGS reaches its unique minimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def with_bias(features: Tensor) -> Tensor:
    """(n, h) → (n, h+1): the features with a constant 1 appended (the bias's feature)."""
    return torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)], 1)


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
