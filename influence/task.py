"""The model-specific part of datablame, in the spirit of Kronfluence's ``Task``.

A Task knows how to turn texts into a batch of tensors, how to run the model on that batch (batched or, under
``torch.func``, functionally with given parameters), which ``nn.Linear`` is the classification head, and the
per-example loss. Everything else in datablame (gradients, sketches, LiSSA, the three methods) is model-agnostic
and only talks to a Task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Examples, Text

Batch = dict[str, Tensor]
"""Model inputs, each a tensor whose first dimension is the batch."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device


class Task:
    """Base adapter: subclasses implement :meth:`encode` and :meth:`model_kwargs`/:meth:`output_logits`.

    ``head_name`` names the final ``nn.Linear`` (K outputs); its input is the penultimate feature vector.
    """

    head_name: str

    def encode(self, texts: Sequence[Text]) -> Batch:
        """Tokenize / featurize n inputs into a batch of tensors (on CPU)."""
        raise NotImplementedError

    def model_kwargs(self, batch: Batch) -> dict[str, Tensor]:
        """Keyword arguments for ``model(**kwargs)``."""
        return dict(batch)

    def output_logits(self, output) -> Tensor:
        """(b, K) logits from whatever the model returns."""
        return output.logits if hasattr(output, "logits") else output

    # ---- derived behaviour, shared by every model ----

    def logits(self, model: nn.Module, batch: Batch) -> Tensor:
        """(b, K) logits of the model in its current mode."""
        return self.output_logits(model(**self.model_kwargs(to_device(batch, model_device(model)))))

    def functional_logits(self, model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """(b, K) logits with ``params`` (names → tensors) standing in for the model's own parameters/buffers."""
        out = torch.func.functional_call(model, dict(params), args=(), kwargs=self.model_kwargs(batch))
        return self.output_logits(out)

    @staticmethod
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        """(b,) per-example cross-entropy in nats."""
        return F.cross_entropy(logits, labels, reduction="none")

    def head(self, model: nn.Module) -> nn.Linear:
        """The final linear layer."""
        return model.get_submodule(self.head_name)

    def logits_and_features(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """(b, K) logits and (b, h) penultimate features (the head's input), from one forward pass."""
        captured: list[Tensor] = []
        hook = self.head(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            logits = self.logits(model, batch)
        finally:
            hook.remove()
        return logits, captured[-1].reshape(logits.shape[0], -1)


@torch.no_grad()
def forward(task: Task, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """The one forward pass every method reads: (b, K) logits and (b, h) penultimate features on the model's
    device, in eval mode (no dropout; the model's mode is restored after), without gradient."""
    was_training = model.training
    if was_training:  # switching modes walks every submodule: only when needed
        model.eval()
    try:
        return task.logits_and_features(model, batch)
    finally:
        if was_training:
            model.train()


@dataclass
class Predicted:
    """A model's predicted labels (b,) int64 and class probabilities (b, K) float32, on CPU, and the (b, h)
    penultimate features they were computed from, on the model's device."""

    labels: Tensor
    probabilities: Tensor
    features: Tensor


def predict(task: Task, model: nn.Module, batch: Batch) -> Predicted:
    """The model's prediction for an encoded batch (one :func:`forward`)."""
    logits, features = forward(task, model, batch)
    probs = logits.float().softmax(-1).cpu()
    return Predicted(probs.argmax(-1), probs, features)


def logits_and_features_of(task: Task, model: nn.Module, examples: Examples, batch_size: int = 64,
                           progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
    """(n, K) logits and (n, h) penultimate features of every example, by :func:`forward` in batches; on the
    model's device."""
    logits, feats = [], []
    for batch in examples.batches(batch_size):
        out, f = forward(task, model, task.encode(batch.texts))
        logits.append(out)
        feats.append(f)
        if progress is not None:
            progress(sum(map(len, logits)), len(examples))
    return torch.cat(logits), torch.cat(feats)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


def find_head(model: nn.Module, num_labels: int) -> str:
    """Name of the last ``nn.Linear`` with ``num_labels`` outputs (e.g. ``classifier``, ``classifier.out_proj``)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not names:
        raise ValueError(f"no nn.Linear with {num_labels} outputs found to serve as the classification head")
    return names[-1]


class HFSequenceClassificationTask(Task):
    """Adapter for any ``AutoModelForSequenceClassification``.

    Passes a ready 4-D additive attention mask, shape (b, 1, 1, T) of 0 / the minimum of the model's dtype
    (float32, or a half-precision model's own, where float32's would overflow to -inf), so that the model's own
    mask builder (which branches on tensor values in transformers 5) is skipped and ``torch.func.vmap`` works.
    Load models with ``attn_implementation="eager"`` for the same reason.
    """

    def __init__(self, tokenizer, model: nn.Module, max_length: int = 128, pooling: str = "cls"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling  # what the head reads (:mod:`.pooling`); the model's forward is made to match
        self.head_name = find_head(model, model.config.num_labels)
        dtype = getattr(model, "dtype", torch.float32)
        self.mask_dtype = dtype if dtype.is_floating_point else torch.float32  # fp16/bf16 models: their own min

    def encode(self, texts: Sequence[Text]) -> Batch:
        if texts and isinstance(texts[0], tuple):
            first, second = [t[0] for t in texts], [t[1] for t in texts]
            enc = self.tokenizer(first, second, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        else:
            enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        mask = enc["attention_mask"].to(self.mask_dtype)
        batch = {"input_ids": enc["input_ids"],
                 "attention_mask": (1.0 - mask[:, None, None, :]) * torch.finfo(self.mask_dtype).min}
        if "token_type_ids" in enc:
            batch["token_type_ids"] = enc["token_type_ids"]
        return batch


class ModuleTask(Task):
    """Adapter for a plain ``torch.nn.Module`` classifier used from Python.

    ``encode`` turns texts into a batch (a dict of tensors passed to ``model(**batch)``); the model returns
    (b, K) logits; ``head_name`` names its final ``nn.Linear``.
    """

    def __init__(self, encode: Callable[[Sequence[Text]], Batch], head_name: str):
        self._encode = encode
        self.head_name = head_name

    def encode(self, texts: Sequence[Text]) -> Batch:
        return self._encode(texts)
