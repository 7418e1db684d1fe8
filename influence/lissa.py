"""Inverse-Hessian-vector products by LiSSA (Agarwal et al. 2017; Koh & Liang 2017).

H is the Hessian of the mean training loss (cross-entropy, nats) w.r.t. the selected parameters (p of them);
Hessian-vector products come from double backpropagation on minibatches. The recursion

    h_0 = v,   h_t = v + h_{t-1} - (H_t + λ I) h_{t-1} / s

(H_t the Hessian on the t-th minibatch, λ the damping, s the scale) converges, when 0 < λ_min(H + λI) and
λ_max(H + λI) < 2 s, to s (H + λI)^{-1} v; the estimate returned is h_T / s, averaged over ``repeats`` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import Examples
from .errors import DatablameError
from .features import FeatureCache, TrainFeatures
from .gradients import HeadGradients, gradient_computer
from .task import Task, model_device

Progress = Callable[[int, int], None]
"""progress(done, total): called as work advances."""


@dataclass
class LissaConfig:
    """damping λ (added to H), scale s (None: 2 × the estimated top eigenvalue), depth T, repeats, minibatch size
    (None: the whole training set every step, i.e. exact HVPs), seed for the minibatch order."""

    damping: float = 0.01
    scale: float | None = None
    depth: int = 100
    repeats: int = 1
    batch_size: int | None = 8
    seed: int = 0


@dataclass
class LissaReport:
    """How the recursion went: the scale used, ‖h_t‖/s after each step (first repeat), and the relative change
    ‖x_T − x_{T'}‖/‖x_T‖ over the last tenth of the steps (max over vectors and repeats)."""

    scale: float
    norms: list[float] = field(default_factory=list)
    relative_change: float = float("nan")
    converged: bool = False


class HessianVectorProducts:
    """H v for the mean loss over minibatches of ``train``, by double backpropagation.

    ``__call__(vs)`` takes (m, p) vectors and returns (m, p) products on the next minibatch (the first
    backward pass is shared by the m vectors). :meth:`reset` restarts the seeded minibatch order, so every
    LiSSA run sees the same minibatches and a query's answer does not depend on the queries before it.

    The logits are differentiated on what the model's :mod:`.gradients` computer takes: when every selected
    parameter belongs to the head, each training example's penultimate features, computed once (on first use,
    then kept; read from disk when ``features``, a :class:`.features.FeatureCache` of ``train``, has them), so
    later runs cost no forward pass through the encoder; otherwise the encoded minibatch, through the model.
    """

    def __init__(self, task: Task, model: nn.Module, names: Sequence[str], train: Examples,
                 batch_size: int | None = 8, seed: int = 0, features: FeatureCache | None = None):
        self.task, self.model, self.names = task, model, list(names)
        self.batch_size, self.seed = batch_size, seed
        self.device = model_device(model)
        if features is None or features.train is not train:  # a cache of its own, by position in ``train``
            features = FeatureCache(replace(train, ids=np.arange(len(train))))
        self.train = features.train
        self.gradients = gradient_computer(task, [model], self.names, features)
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._order: list[int] = []

    def _next_ids(self) -> list[int]:
        if self.batch_size is None or self.batch_size >= len(self.train):
            return list(range(len(self.train)))
        if len(self._order) < self.batch_size:
            self._order.extend(self.rng.permutation(len(self.train)).tolist())
        ids, self._order = self._order[: self.batch_size], self._order[self.batch_size:]
        return ids

    @property
    def head_only(self) -> bool:
        """Whether the products differentiate the head alone, on penultimate features."""
        return isinstance(self.gradients, HeadGradients)

    @property
    def train_features(self) -> TrainFeatures:
        """The training set's penultimate features under this model's encoder (what head products read)."""
        return self.gradients.features.of(self.task, self.model)

    def __call__(self, vs: Tensor) -> Tensor:
        ids = self._next_ids()
        batch = self.train.subset(ids)
        logits_fn = self.gradients.functional_logits(self.model, self.gradients.train_inputs(self.model, batch))
        labels = torch.as_tensor(self.train.labels[ids], device=self.device)
        params = self.gradients.params(self.model)
        leaves = [params[n].clone().requires_grad_(True) for n in self.names]
        was_training = self.model.training
        if was_training:  # switching modes walks every submodule: only when needed
            self.model.eval()
        try:
            with torch.enable_grad():
                loss = self.task.loss(logits_fn(dict(zip(self.names, leaves))), labels).mean()
                grads = torch.autograd.grad(loss, leaves, create_graph=True)
                flat = torch.cat([g.reshape(-1) for g in grads])
                out = []
                for i, v in enumerate(vs):
                    hv = torch.autograd.grad(flat @ v.to(flat), leaves, retain_graph=i < len(vs) - 1)
                    out.append(torch.cat([h.reshape(-1) for h in hv]))
        finally:
            if was_training:
                self.model.train()
        return torch.stack(out).detach().float()


def top_eigenvalue(hvp: Callable[[Tensor], Tensor], p: int, iters: int = 20, seed: int = 0) -> float:
    """Power-iteration estimate of the Hessian's largest eigenvalue (in absolute value)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, p, generator=g)
    v /= v.norm()
    value = 0.0
    for _ in range(iters):
        hv = hvp(v)
        value = float(hv.norm())
        if not math.isfinite(value) or value == 0.0:
            break
        v = hv / value
    return value


def lissa(hvp: Callable[[Tensor], Tensor], v: Tensor, config: LissaConfig = LissaConfig(),
          progress: Progress | None = None) -> tuple[Tensor, LissaReport]:
    """(m, p) estimates of (H + λI)^{-1} v for (m, p) vectors v, and a :class:`LissaReport`.

    Raises DatablameError, naming the setting to raise, when the recursion diverges (a NaN or inf, or a norm
    past the s/λ · ‖v‖ that a converging recursion cannot exceed).
    """
    v = v.float().reshape(-1, v.shape[-1])
    scale = config.scale
    if scale is None:
        scale = 2.0 * (top_eigenvalue(hvp, v.shape[1], seed=config.seed) + config.damping)
    if not scale > 0:
        raise DatablameError(f"LiSSA's scale must be positive, got {scale} (2 × the estimated top Hessian "
                             "eigenvalue + λ)", "answer influence queries with --curvature sketch or exact")
    report = LissaReport(scale=scale)
    bound = 10.0 * scale / config.damping * v.norm(dim=1, keepdim=True) if config.damping > 0 else None
    total, done = config.depth * config.repeats, 0
    tail = max(1, config.depth // 10)
    estimates = []
    for r in range(config.repeats):
        h = v.clone()
        marker = h.clone()
        for t in range(config.depth):
            h = v + h - (hvp(h) + config.damping * h) / scale
            norms = h.norm(dim=1, keepdim=True)
            if not torch.isfinite(norms).all():
                raise DatablameError(f"LiSSA diverged at step {t + 1} (the estimate became NaN or inf; scale "
                                     f"{scale:g})", f"raise the damping above {config.damping:g} (--damping), or "
                                     "answer with --curvature sketch or exact")
            if bound is not None and (norms > bound).any():
                raise DatablameError(f"LiSSA diverged at step {t + 1} (the estimate's norm keeps growing: the "
                                     f"Hessian has negative curvature; scale {scale:g})",
                                     f"raise the damping above {config.damping:g} (--damping), or answer with "
                                     "--curvature sketch or exact")
            if r == 0:
                report.norms.append(float(norms.max()) / scale)
            if t == config.depth - 1 - tail:
                marker = h.clone()
            done += 1
            if progress is not None:
                progress(done, total)
        change = float(((h - marker).norm(dim=1) / h.norm(dim=1).clamp_min(1e-30)).max())
        report.relative_change = change if r == 0 else max(report.relative_change, change)
        estimates.append(h / scale)
    report.converged = report.relative_change < 0.01
    return torch.stack(estimates).mean(0), report
