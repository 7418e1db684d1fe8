"""A small BERT built from a config, with a word-level tokenizer: for tests, benchmarks and offline demos."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_small_bert(folder: str | Path, words: Iterable[str], num_labels: int, layers: int = 2, hidden: int = 32,
                     seed: int = 0, max_positions: int = 128) -> Path:
    """Save a randomly initialised ``BertForSequenceClassification`` (``layers`` × ``hidden``) and a tokenizer
    whose vocabulary is ``words`` (lower-cased) into ``folder``; loads with :func:`.models.load_classifier`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted({w.lower() for w in words} - set(SPECIAL))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                        num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def vocabulary(texts: Iterable[str], max_words: int = 20000) -> list[str]:
    """The ``max_words`` most frequent lower-cased word and punctuation tokens of ``texts``."""
    from collections import Counter

    counts = Counter(tok for t in texts for tok in re.findall(r"\w+|[^\w\s]", t.lower()))
    return [w for w, _ in counts.most_common(max_words)]
