"""The demo dataset shipped with datablame: customer-support messages with known, injected label errors.

``messages.csv`` has columns ``id,text,label,true_label``: ``label`` is what a model is trained on (with errors
injected), ``true_label`` the clean label. An example's id is its 0-based row, as everywhere in datablame
(the ``id`` column repeats it). ``queries.txt`` holds a few inputs, not in the training data, to explain.
"""

from __future__ import annotations

import csv
from pathlib import Path

_DIR = Path(__file__).resolve().parent / "demo_data"


def demo_dataset_path() -> Path:
    """Path of the demo training data, ``demo_data/messages.csv`` inside the installed package."""
    return _DIR / "messages.csv"


def demo_queries() -> list[str]:
    """The sample inputs to explain, one per non-empty line of ``demo_data/queries.txt``."""
    lines = (_DIR / "queries.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def injected_errors() -> set[int]:
    """Ids (0-based rows) of the demo examples whose ``label`` differs from their ``true_label``."""
    with open(demo_dataset_path(), newline="", encoding="utf-8") as fh:
        return {row for row, rec in enumerate(csv.DictReader(fh)) if rec["label"] != rec["true_label"]}
