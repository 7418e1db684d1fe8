"""Gradient computers: the one part that decides where per-example gradients come from.

- :class:`HeadGradients`, when every selected parameter is the head's (the default after ``--freeze-encoder``):
  a model's gradient is taken on (b, h) penultimate features; the layers below run once, frozen, under
  ``no_grad`` (training examples' features are read from the feature cache), and ``vmap`` differentiates the
  head alone.
- :class:`ModelGradients`, for any other selection (``--params last-layer``, globs, everything): on the encoded
  (b, T) batch, ``vmap`` differentiates the whole model.

:func:`gradient_computer` makes that choice once for a method; every method then asks its computer the same
questions, never which kind it holds: the model's prediction and each checkpoint's inputs for query texts
(:meth:`GradientComputer.queries`), the inputs of training examples, the (b, K) logits and the (b, p) float32
gradients on given inputs (of the cross-entropy in nats, or of any :data:`.grads.Objective`), and the functional
logits that Hessian-vector products differentiate twice (:class:`.lissa.HessianVectorProducts`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import Examples, Text
from .features import FeatureCache, same_encoder
from .grads import Objective, head_grads, head_logits_fn, only_head, per_example_grads, split_params
from .task import Batch, Task, forward, model_device, predict, to_device

Inputs = Tensor | Batch
"""What one model's gradient is taken on: (b, h) features (:class:`HeadGradients`) or an encoded batch."""
FunctionalLogits = Callable[[dict[str, Tensor]], Tensor]
"""selected parameters (full names → tensors) → (b, K) logits on fixed inputs, differentiable."""


@dataclass
class QueryInputs:
    """The last model's predicted labels (b,) and probabilities (b, K) on CPU, and each model's inputs."""

    predictions: Tensor
    probabilities: Tensor
    inputs: list[Inputs]


def labels_of(batch: Examples) -> Tensor:
    """(b,) int64 labels of a batch of examples."""
    return torch.as_tensor(np.asarray(batch.labels), dtype=torch.long)


HEAD_BATCH = 4096
"""Most training examples per call of head gradients read from the feature cache."""

HEAD_BATCH_BYTES = 256 << 20
"""The float32 gradients of one call of head gradients stay under this many bytes (over every checkpoint)."""


class GradientComputer(ABC):
    """Per-example gradients over the selected parameters ``names`` of ``models`` (checkpoints in order; the last
    one predicts), for a ``task``; ``features``: the training set's penultimate feature cache, if any."""

    def __init__(self, task: Task, models: Sequence[nn.Module], names: Sequence[str],
                 features: FeatureCache | None = None):
        self.task, self.models, self.names, self.features = task, list(models), list(names), features
        self._groups: list[int] | None = None  # encoder_groups, on first use

    @abstractmethod
    def inputs(self, model: nn.Module, batch: Batch) -> Inputs:
        """A model's inputs for an encoded batch."""

    @abstractmethod
    def train_inputs(self, model: nn.Module, batch: Examples) -> Inputs:
        """A model's inputs for training examples (from the feature cache where it serves)."""

    @abstractmethod
    def logits(self, model: nn.Module, inputs: Inputs) -> Tensor:
        """(b, K) logits, eval mode, no gradient."""

    @abstractmethod
    def grads(self, model: nn.Module, inputs: Inputs, labels: Tensor, objective: Objective | None = None) -> Tensor:
        """(b, p) float32 per-example gradients of the cross-entropy (nats), or of ``objective``, for (b,) labels."""

    @abstractmethod
    def functional_logits(self, model: nn.Module, inputs: Inputs) -> FunctionalLogits:
        """The logits on fixed inputs as a function of the selected parameters (for Hessian-vector products)."""

    @abstractmethod
    def params(self, model: nn.Module) -> dict[str, Tensor]:
        """The selected parameters of a model, detached, by full name."""

    def encoder_groups(self) -> list[int]:
        """For each model, the index of the first model whose encoder (everything below the head) equals its own:
        models of one group share their penultimate features."""
        if self._groups is None:
            self._groups = [next(j for j in range(i + 1) if same_encoder(self.task, self.models[j], m))
                            for i, m in enumerate(self.models)]
        return self._groups

    def queries(self, texts: Sequence[Text]) -> QueryInputs:
        """The last model's prediction for ``texts`` and every model's inputs."""
        batch = self.task.encode(texts)
        predicted = predict(self.task, self.models[-1], batch)
        return QueryInputs(predicted.labels, predicted.probabilities,
                           [self.inputs(m, batch) for m in self.models])

    def train_grads(self, model: nn.Module, batch: Examples, objective: Objective | None = None) -> Tensor:
        """(b, p) gradients of training examples for their own labels."""
        return self.grads(model, self.train_inputs(model, batch), labels_of(batch), objective)

    def train_batch(self, batch_size: int) -> int:
        """Training examples per gradient call, given the caller's ``batch_size`` (what the encoder's memory
        allows): that size."""
        return batch_size

    def loss_hessian(self, model: nn.Module, train: Examples) -> Tensor | None:
        """(p, p) float64 Hessian of the mean training loss over the selected parameters in closed form, or None
        where this computer has none (Hessian-vector products then build it)."""
        return None


def softmax_head(task: Task, model: nn.Module, names: Sequence[str]) -> tuple[list[int], int] | None:
    """(numel of each selected parameter, K) when ``names`` are only the weight and/or bias of the task's linear
    head under the cross-entropy of its K-class softmax (where :class:`.sketch.SoftmaxBasis` keeps gradients exact
    and :meth:`HeadGradients.loss_hessian` has a closed form), else None."""
    head, prefix = task.head(model), task.head_name + "."
    if type(task).loss is not Task.loss or not isinstance(head, nn.Linear):
        return None
    sizes = {prefix + "weight": head.weight.numel(), prefix + "bias": head.bias.numel() if head.bias is not None
             else None}
    if not names or any(sizes.get(n) is None for n in names):
        return None
    return [sizes[n] for n in names], head.out_features


class HeadGradients(GradientComputer):
    """Every selected parameter is the head's: inputs are (b, h) penultimate features, computed once per distinct
    encoder for queries and read from the feature cache for training examples."""

    def inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return forward(self.task, model, batch)[1]

    def train_inputs(self, model: nn.Module, batch: Examples) -> Tensor:
        f = self.features.rows(self.task, model, batch) if self.features is not None else None
        return self.inputs(model, self.task.encode(batch.texts)) if f is None else f

    @torch.no_grad()
    def logits(self, model: nn.Module, inputs: Tensor) -> Tensor:
        return self.task.head(model).eval()(inputs)

    def train_batch(self, batch_size: int) -> int:
        """With a feature cache (which runs the encoder, where it must, in its own batches): at least
        ``batch_size``, up to :data:`HEAD_BATCH` examples while their float32 gradients over every model stay
        under :data:`HEAD_BATCH_BYTES`. A head's gradients take microseconds, so small calls are mostly overhead:
        67,349 examples took 3.7 s in calls of 32 and 0.24 s in calls of 1,024 (MiniLM's 770-parameter head)."""
        if self.features is None:
            return batch_size
        p = sum(t.numel() for t in self.params(self.models[0]).values()) * len(self.models)
        return max(batch_size, min(HEAD_BATCH, HEAD_BATCH_BYTES // max(1, 4 * p)))

    def grads(self, model: nn.Module, inputs: Tensor, labels: Tensor, objective: Objective | None = None) -> Tensor:
        """Of the cross-entropy of a linear softmax head (:func:`softmax_head`): in closed form, (p − e_y) ⊗ x for
        the weight and p − e_y for the bias, several times faster than differentiating; otherwise by ``vmap``."""
        if objective is not None or softmax_head(self.task, model, self.names) is None:
            return head_grads(self.task, model, inputs, labels, self.names, objective=objective)
        head, prefix = self.task.head(model), self.task.head_name + "."
        with torch.no_grad():
            r = torch.softmax(head(inputs.to(head.weight.dtype)), -1)
            r[torch.arange(len(r)), labels.to(r.device)] -= 1.0
            parts = {prefix + "weight": (r[:, :, None] * inputs[:, None, :]).reshape(len(r), -1), prefix + "bias": r}
            return torch.cat([parts[n] for n in self.names], 1).float()

    def functional_logits(self, model: nn.Module, inputs: Tensor) -> FunctionalLogits:
        head_fn = head_logits_fn(self.task, model, self.names)
        return lambda params: head_fn(params, inputs)

    def params(self, model: nn.Module) -> dict[str, Tensor]:
        prefix = self.task.head_name + "."
        return {prefix + n: p.detach() for n, p in self.task.head(model).named_parameters()
                if prefix + n in self.names}

    def loss_hessian(self, model: nn.Module, train: Examples, rows: int = 8192) -> Tensor | None:
        """The Hessian of the mean cross-entropy of a linear head over its weight and/or bias, in closed form:
        (1/n) Σ_i (diag p_i − p_i p_iᵀ) ⊗ z_i z_iᵀ with z_i = [f_i, 1], summed ``rows`` examples at a time (float32
        products, float64 sums) and ordered as the gradients are (weight row by row, then bias). None for another
        head or loss."""
        if softmax_head(self.task, model, self.names) is None:
            return None
        head, prefix = self.task.head(model), self.task.head_name + "."
        k, h = head.out_features, head.in_features
        blocks = {prefix + "weight": [c * (h + 1) + j for c in range(k) for j in range(h)],
                  prefix + "bias": [c * (h + 1) + h for c in range(k)]}  # where each parameter's entries lie
        total = torch.zeros(k, k, h + 1, h + 1, dtype=torch.float64)
        for lo in range(0, len(train), rows):
            batch = train.subset(np.arange(lo, min(lo + rows, len(train))))
            f = self.train_inputs(model, batch)
            p = self.logits(model, f).double().softmax(-1).cpu()
            z = torch.cat([f.float().cpu(), torch.ones(len(f), 1)], 1)
            a = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).float()  # (b, K, K)
            for c in range(k - 1):  # each block's product in float32, summed in float64 (as methods.gram)
                for d in range(c, k - 1):
                    total[c, d] += (z.T @ (a[:, c, d, None] * z)).double()
        for c in range(k - 1):
            for d in range(c):
                total[c, d] = total[d, c]
        # each row of diag p − p pᵀ sums to 0, so the last class's blocks are minus the sum of the others': (K − 1)K/2
        # products instead of K(K + 1)/2 (one instead of three for two classes)
        total[:k - 1, k - 1] = -total[:k - 1, :k - 1].sum(1)
        total[k - 1, :k - 1] = total[:k - 1, k - 1]
        total[k - 1, k - 1] = -total[k - 1, :k - 1].sum(0)
        design = (total / len(train)).permute(0, 2, 1, 3).reshape(k * (h + 1), k * (h + 1))  # index c·(h+1) + j
        order = [i for n in self.names for i in blocks[n]]
        return design[order][:, order]

    def queries(self, texts: Sequence[Text]) -> QueryInputs:
        """One forward pass per distinct encoder (one in all after frozen-encoder training), not per model."""
        batch, groups, feats = self.task.encode(texts), self.encoder_groups(), {}
        predicted = predict(self.task, self.models[-1], batch)
        feats[groups[-1]] = predicted.features
        for i, model in enumerate(self.models):
            if groups[i] not in feats:
                feats[groups[i]] = self.inputs(model, batch)
        return QueryInputs(predicted.labels, predicted.probabilities, [feats[g] for g in groups])


class ModelGradients(GradientComputer):
    """Selected parameters below the head: inputs are the encoded batch, differentiated through the model."""

    def inputs(self, model: nn.Module, batch: Batch) -> Batch:
        return batch

    def train_inputs(self, model: nn.Module, batch: Examples) -> Batch:
        return self.task.encode(batch.texts)

    def logits(self, model: nn.Module, inputs: Batch) -> Tensor:
        return forward(self.task, model, inputs)[0]

    def grads(self, model: nn.Module, inputs: Batch, labels: Tensor, objective: Objective | None = None) -> Tensor:
        return per_example_grads(self.task, model, inputs, labels, self.names, objective=objective)

    def functional_logits(self, model: nn.Module, inputs: Batch) -> FunctionalLogits:
        batch = to_device(inputs, model_device(model))
        _, fixed = split_params(model, self.names)
        return lambda params: self.task.functional_logits(model, {**fixed, **params}, batch)

    def params(self, model: nn.Module) -> dict[str, Tensor]:
        return split_params(model, self.names)[0]


def gradient_computer(task: Task, models: Sequence[nn.Module], names: Sequence[str],
                      features: FeatureCache | None = None) -> GradientComputer:
    """The computer for these selected parameters: :class:`HeadGradients` when they are all the head's, else
    :class:`ModelGradients` (the one place this is decided)."""
    kind = HeadGradients if only_head(task, names) else ModelGradients
    return kind(task, models, names, features)
