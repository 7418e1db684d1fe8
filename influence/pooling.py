"""What the classification head reads: the model's own head input, or the mean of the encoder's token states.

A BERT-style ``AutoModelForSequenceClassification`` feeds its head the pooler's ``tanh(W·h_CLS)``. A
sentence-transformers encoder (all-MiniLM-L6-v2 and its kin) was trained to be read through mean pooling instead,
and says so in its folder (``modules.json`` names a ``Pooling`` module whose ``config.json`` sets
``pooling_mode_mean_tokens``). With ``mean`` pooling the head reads the attention-masked mean of the encoder's last
hidden states, (b, h); layers between the encoder and the head (BERT's pooler) are bypassed.

    cls    the model's own head input (whatever its architecture feeds the head)
    mean   head(mean of the last hidden states over the real, unpadded tokens)
    auto   (training only) mean when the model folder's sentence-transformers config asks for it, else cls

The choice is saved in the model's ``config.json`` (``datablame_pooling``), so every checkpoint says how it reads
its encoder, :func:`.models.load_classifier` restores it, and the checkpoint digest (hence every key computed from
it) changes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import DatablameError, check_choice

POOLINGS = ("auto", "cls", "mean")
CONFIG_KEY = "datablame_pooling"


def sentence_transformers_pooling(folder: str | Path) -> str | None:
    """``mean`` or ``cls`` as the folder's sentence-transformers ``Pooling`` module asks, or None when the folder
    has none (or it asks for another mode, e.g. max)."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        path = next(m["path"] for m in modules if m.get("type", "").endswith("models.Pooling"))
        config = json.loads((folder / path / "config.json").read_text())
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    return None


def resolve_pooling(folder: str | Path, config, pooling: str | None) -> str:
    """``cls`` or ``mean`` for a model loaded from ``folder`` with HF ``config``: ``pooling`` when it names one;
    None: as saved in the config (cls when nothing is); ``auto``: as saved, else as the folder's
    sentence-transformers config asks, else cls."""
    if pooling is not None:
        check_choice("pooling", pooling, POOLINGS, "--pooling")
        if pooling != "auto":
            return pooling
    saved = getattr(config, CONFIG_KEY, None)
    if saved in ("cls", "mean"):
        return saved
    return (sentence_transformers_pooling(folder) if pooling == "auto" else None) or "cls"


def keep_mask(attention_mask: Tensor) -> Tensor:
    """(b, T) float, 1 for a real token and 0 for padding, from a (b, T) 0/1 mask or the (b, 1, 1, T) additive
    mask (0 where attended, very negative where not) that :class:`.task.HFSequenceClassificationTask` passes."""
    if attention_mask.dim() == 4:
        return (attention_mask[:, 0, 0, :] == 0).to(torch.float32)
    return (attention_mask > 0).to(torch.float32)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(b, h) mean of ``hidden`` (b, T, h) over each row's real tokens."""
    keep = keep_mask(attention_mask).to(hidden.dtype)[..., None]
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def apply_pooling(model: nn.Module, head_name: str, pooling: str) -> None:
    """Make ``model`` read its encoder with ``pooling`` (``cls``: unchanged; ``mean``: its ``forward`` becomes
    head(dropout(mean_pool(last hidden states)))) and record the choice in ``model.config`` so that
    ``save_pretrained`` keeps it. ``mean`` needs a head that is one ``nn.Linear`` over the hidden size, a direct
    child of the model (BERT's ``classifier``; not RoBERTa's two-layer ``classifier.out_proj``)."""
    model.config.update({CONFIG_KEY: pooling})
    if pooling == "cls":
        return
    head = model.get_submodule(head_name)
    hidden = getattr(model.config, "hidden_size", None)
    if "." in head_name or not isinstance(head, nn.Linear) or head.in_features != hidden or \
            not hasattr(model, "base_model"):
        raise DatablameError(f"--pooling mean needs a classification head that is one linear layer over the "
                             f"hidden size; {type(model).__name__}'s {head_name} is not",
                             "use --pooling cls for this model")
    def forward(input_ids=None, attention_mask=None, token_type_ids=None, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        states = model.base_model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        # the modules looked up at each call: one replaced in place (a wrapper such as Kronfluence's) is the one used
        pooled = getattr(model, "dropout", nn.Identity())(mean_pool(states, attention_mask))
        return SequenceClassifierOutput(logits=model.get_submodule(head_name)(pooled))

    model.forward = forward
