"""Retraining a frozen encoder's head on subsets of the training data, many subsets at once.

``train --freeze-encoder`` trains a linear head on cached features with a fixed recipe: from the head the base
model was given (seeded), AdamW (β 0.9/0.999, ε 1e-8, weight decay 0.01), the learning rate decayed linearly from
lr to lr/10 over the steps (:func:`.train.learning_rate`), batches of ``batch_size`` rows of a seeded permutation
per epoch, no dropout. :func:`retrain_heads` replays that recipe on R subsets of the training rows together: each
subset gets exactly the steps, permutations and learning rates ``train`` would give a dataset of just those rows
(with all rows, the final checkpoint's head, to float rounding), and the R heads are stacked, (R, K, h) weights
and (R, K) biases, so that one step costs about what one head's step costs.

This is what retraining checks need: ``explain --verify`` (without the top supporters, without random examples,
without the top opponents) and the faithfulness benchmark's random subsets.

    heads = retrain_heads(init, x, y, [all_rows, rows_without_top_k], recipe(config))
    heads.logits(query_features)    # (R, b, K)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DatablameError
from .heads import head_theta, with_bias
from .train import TrainSettings, learning_rate
from .workdir import Config

BETAS, EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-8, 0.01
"""AdamW's settings in :func:`.train.train`."""


@dataclass
class Heads:
    """R linear heads: ``weight`` (R, K, h), ``bias`` (R, K)."""

    weight: Tensor
    bias: Tensor

    def logits(self, features: Tensor) -> Tensor:
        """(R, b, K) logits of every head for (b, h) features."""
        return torch.einsum("bh,rkh->rbk", features.to(self.weight.dtype), self.weight) + self.bias[:, None, :]

    def linear(self, i: int) -> nn.Linear:
        """Head ``i`` as an ``nn.Linear`` (h → K)."""
        head = nn.Linear(self.weight.shape[2], self.weight.shape[1])
        with torch.no_grad():
            head.weight.copy_(self.weight[i])
            head.bias.copy_(self.bias[i])
        return head


def recipe(config: Config, frozen: bool = True) -> TrainSettings:
    """The settings a workdir was trained with; refused for a workdir that ``init`` made (no recipe recorded) and,
    when ``frozen`` (retraining the head alone), for one whose encoder was not frozen (its retraining is a whole
    fine-tune)."""
    training = dict(config.training or {})
    if not training:
        raise DatablameError("this workdir has no training recipe (made by 'datablame init')",
                             "retraining needs a workdir made by 'datablame train'")
    if frozen and not training.get("freeze_encoder"):
        raise DatablameError("retraining the head needs a frozen encoder; this workdir fine-tuned the whole model",
                             "train with --freeze-encoder (the head then retrains in seconds)")
    return TrainSettings(**training)


def initial_head(config: Config, device: str = "cpu") -> nn.Linear:
    """The head ``train`` started from: the base model's, as :func:`.models.load_classifier` builds it with the
    recipe's seed and pooling (a new head is initialised from the seed)."""
    from .models import load_classifier

    settings = recipe(config)
    model, task = load_classifier(base_model(config), config.label_names, device, settings.max_length, settings.seed,
                                  settings.pooling)
    return task.head(model)


def base_model(config: Config) -> str:
    """The folder of the model training started from, refused when it is gone (retraining starts from it)."""
    if not (Path(config.base_model) / "config.json").is_file():
        raise DatablameError(f"the base model {config.base_model} is not there any more",
                             "retraining starts from it: restore that folder")
    return config.base_model


def _adamw_step(p: Tensor, grad: Tensor, m: Tensor, v: Tensor, lr: Tensor, step: Tensor, live: Tensor | None
                ) -> None:
    """One AdamW update of stacked parameters ``p`` (R, …) in place, as ``torch.optim.AdamW`` computes it, with a
    learning rate per head ``lr`` (R,), a 1-based step per head ``step`` (R,), and only where ``live`` (R,) bool
    (None: every head)."""
    shape = (-1,) + (1,) * (p.dim() - 1)
    lr, step = lr.view(shape), step.view(shape)
    beta1, beta2 = BETAS
    if live is not None:
        old = p.clone(), m.clone(), v.clone()
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (v.sqrt() / torch.sqrt(1 - beta2 ** step)).add_(EPS)
    p.mul_(1 - lr * WEIGHT_DECAY).sub_(lr / (1 - beta1 ** step) * m / denom)
    if live is not None:
        keep = ~live.view(shape)
        for new, before in zip((p, m, v), old):
            new.copy_(torch.where(keep, before, new))


@torch.no_grad()
def retrain_heads(init: nn.Linear, x: Tensor, y: Tensor, subsets: Sequence[np.ndarray],
                  settings: TrainSettings, paired: bool = False,
                  on_epoch: Callable[[Heads], None] | None = None) -> Heads:
    """The heads ``train --freeze-encoder`` would train from ``init`` on each subset of the training rows.

    x: (n, h) features of every training example; y: (n,) labels; subsets: R arrays of row ids, each in the
    order the rows have in the training data (``train`` permutes them by position). Deterministic; a subset of
    all rows gives the checkpoint's head to float32 rounding (about 1e-6). Runs on the device of ``x``.

    ``paired``: every head takes the steps of the run on all n rows instead (the same permutations, batches and
    learning rates), a row outside its subset left out of its batch's mean loss (a batch left empty still takes
    AdamW's step, with a zero gradient). The heads then differ only by the rows left out, not by the order SGD
    happened to see the others in: a counterfactual with the run's randomness held fixed.

    ``on_epoch(heads)`` sees the heads at the end of every epoch (training dynamics; views, read them at once).
    Runs on one CPU thread (restored after): its operations are tiny, and more threads made it tens of times
    slower on a busy two-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _retrain(init, x, y, subsets, settings, paired, on_epoch)
    finally:
        torch.set_num_threads(threads)


def area_under_margin(init: nn.Linear, x: Tensor, y: Tensor, settings: TrainSettings) -> np.ndarray:
    """(n,) float64 AUM (Pleiss et al. 2020) of every training example: the margin of its given label (its logit
    minus the largest other, nats) at the end of each epoch of the head's training, averaged over the epochs; the
    training replayed on all rows by :func:`retrain_heads`. Mislabeled examples keep a low, often negative, margin
    while the others are learned."""
    total = torch.zeros(len(y), dtype=torch.float64)

    def record(heads: Heads) -> None:
        logits = heads.logits(x)[0].double()
        given = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], -torch.inf).max(1).values
        total.add_(given - others)

    retrain_heads(init, x, y, [np.arange(len(y))], settings, on_epoch=record)
    return (total / settings.epochs).numpy()


def _epoch_order(rows: list[Tensor], generators: list[torch.Generator], width: int,
                 member: Tensor | None) -> tuple[Tensor, Tensor]:
    """(R, width) int64 row ids of one epoch of each head, padded, and (R, width) float 1 where a row counts in its
    batch: each subset's own seeded permutation, as ``train`` draws one; paired (``member``: (R, n) bool), one
    permutation of all n rows (one generator) shared by every head, the rows outside a head's subset counted 0."""
    order, valid = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width)
    if member is not None:
        permutation = torch.randperm(member.shape[1], generator=generators[0])
        order[:, :len(permutation)] = permutation
        valid[:, :len(permutation)] = member[:, permutation].float()
        return order, valid
    for i, (s, g) in enumerate(zip(rows, generators)):
        order[i, :len(s)], valid[i, :len(s)] = s[torch.randperm(len(s), generator=g)], 1.0
    return order, valid


def _retrain(init: nn.Linear, x: Tensor, y: Tensor, subsets: Sequence[np.ndarray], settings: TrainSettings,
             paired: bool, on_epoch: Callable[[Heads], None] | None) -> Heads:
    device, r, b = x.device, len(subsets), settings.batch_size
    rows = [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in subsets]
    if any(len(s) == 0 for s in rows):
        raise DatablameError("a retraining subset is empty", "keep at least one training example")
    member = None
    if paired:  # every head runs over all rows; member[i] marks the rows of head i's subset
        member = torch.zeros(r, len(x), dtype=torch.bool)
        for i, s in enumerate(rows):
            member[i, s] = True
    per_epoch = np.array([math.ceil((len(x) if paired else len(s)) / b) for s in rows])
    totals, steps = settings.epochs * per_epoch, int(per_epoch.max())
    rates = torch.tensor(np.stack([[learning_rate(min(k, t - 1), int(t), settings.lr) for k in range(int(totals.max()))]
                                   for t in totals]), dtype=torch.float32, device=device)  # (R, most steps)
    # weight and bias as one (R, K, h + 1) parameter over features with a column of ones: AdamW treats every
    # element alike (the weight decay applies to the bias too, as in train), so this is the same update
    x = with_bias(x.to(torch.float32))
    theta = head_theta(init).to(device, torch.float32)
    theta = theta.expand(r, -1, -1).clone()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    generators = [torch.Generator().manual_seed(settings.seed) for _ in ([None] if paired else rows)]
    per_epoch_t = torch.as_tensor(per_epoch, device=device)
    for epoch in range(settings.epochs):
        order, valid = (t.to(device) for t in _epoch_order(rows, generators, steps * b, member))
        for position in range(steps):
            ids, mask = order[:, position * b:(position + 1) * b], valid[:, position * b:(position + 1) * b]
            step = epoch * per_epoch_t + position  # 0-based, per head
            live = None if position < per_epoch.min() else position < per_epoch_t
            lr = rates.gather(1, step.clamp_max(rates.shape[1] - 1)[:, None])[:, 0]
            xs = x[ids]  # (R, b, h)
            probs = F.softmax(torch.bmm(xs, theta.transpose(1, 2)), dim=-1)  # (R, b, K)
            delta = (probs - F.one_hot(y[ids], probs.shape[-1]).float()) * \
                (mask / mask.sum(1, keepdim=True).clamp_min(1))[..., None]
            _adamw_step(theta, torch.bmm(delta.transpose(1, 2), xs), m, v, lr, (step + 1).float(), live)
        if on_epoch is not None:
            on_epoch(Heads(theta[..., :-1], theta[..., -1]))
    return Heads(theta[..., :-1].contiguous(), theta[..., -1].contiguous())
