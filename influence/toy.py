"""A small BERT built from a config, with a word-level tokenizer: for tests, benchmarks and offline demos."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_small_bert(folder: str | Path, words: Iterable[str], num_labels: int, layers: int = 2, hidden: int = 32,
                     seed: int = 0, max_positions: int = 128, init_range: float = 0.1) -> Path:
    """Save a randomly initialised ``BertForSequenceClassification`` (``layers`` × ``hidden``) and a tokenizer
    whose vocabulary is ``words`` (lower-cased) into ``folder``; loads with :func:`.models.load_classifier`.

    ``init_range``: the weights' standard deviation. BERT's 0.02 suits hidden size 768; at hidden size 32 it
    leaves the [CLS] features of different inputs almost equal (std ~3e-4), and the model does not learn."""
    import inspect

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted({w.lower() for w in words} - set(SPECIAL))
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5 ignores vocab_file
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    else:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"the tokenizer holds {len(tokenizer)} tokens, not the {len(vocab)} given")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                        num_labels=num_labels, initializer_range=init_range)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def vocabulary(texts: Iterable[str], max_words: int = 20000) -> list[str]:
    """The ``max_words`` most frequent lower-cased word and punctuation tokens of ``texts``."""
    from collections import Counter

    counts = Counter(tok for t in texts for tok in re.findall(r"\w+|[^\w\s]", t.lower()))
    return [w for w, _ in counts.most_common(max_words)]
