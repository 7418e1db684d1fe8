"""Loading labelled text data: CSV, TSV, JSONL/JSON, parquet or a saved ``datasets`` folder.

An example's id is its 0-based row in the file, everywhere in datablame.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from .errors import DatablameError
from .tables import DEFAULT_ENCODING, read_table

Text = Union[str, tuple[str, str]]
"""One input: a sentence, or a pair of sentences (e.g. premise, hypothesis) for NLI."""

@dataclass
class Examples:
    """A labelled text dataset held in memory.

    texts: n inputs (str, or a (str, str) pair); labels: (n,) int64 indexes into ``label_names``.
    ``fingerprint`` is the SHA-256 of the file's bytes (of all files, for a folder).
    """

    texts: list[Text]
    labels: np.ndarray
    label_names: list[str]
    path: str = ""
    fingerprint: str = ""
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    ids: np.ndarray = field(default=None)  # type: ignore[assignment]
    encoding: str = DEFAULT_ENCODING

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.ids is None:
            self.ids = np.arange(len(self.texts), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, ids: Sequence[int]) -> "Examples":
        """The examples at these positions, keeping their original ids."""
        ids = np.asarray(ids, dtype=np.int64)
        return Examples(
            texts=[self.texts[i] for i in ids], labels=self.labels[ids], label_names=self.label_names,
            path=self.path, fingerprint=self.fingerprint, text_columns=self.text_columns,
            label_column=self.label_column, ids=self.ids[ids], encoding=self.encoding,
        )

    def batches(self, batch_size: int) -> Iterator["Examples"]:
        """Consecutive slices of at most ``batch_size`` examples, in order."""
        for start in range(0, len(self), batch_size):
            yield self.subset(range(start, min(start + batch_size, len(self))))


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, or of a folder's files (names and bytes, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def parse_text_columns(text_column: str | Sequence[str]) -> tuple[str, ...]:
    """``"text"`` -> ("text",); ``"premise,hypothesis"`` -> ("premise", "hypothesis")."""
    cols = tuple(c.strip() for c in (text_column.split(",") if isinstance(text_column, str) else text_column))
    if not 1 <= len(cols) <= 2 or not all(cols):
        raise DatablameError(f"--text-column {text_column!r} must name one column or a pair",
                             "e.g. --text-column text or --text-column premise,hypothesis")
    return cols


def load_examples(
    path: str | os.PathLike,
    text_column: str | Sequence[str] = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> Examples:
    """Load a labelled text dataset, reading text faithfully (see :mod:`datablame.influence.tables`).

    Labels may be strings or integers. With ``label_names`` given (e.g. from a workdir), every label must be
    one of them (or an integer index into them); without, they are the sorted distinct labels, and integer
    labels keep their values (names ``"0" … str(max)``), and at least two classes are required.
    Raises DatablameError on a missing file or column, an empty file, an undecodable byte, a missing, unknown
    or list-typed label, or a row without text.
    """
    p = Path(path)
    if not p.exists():
        raise DatablameError(f"data file {p} not found", "check the path")
    cols = parse_text_columns(text_column)
    table = read_table(p, encoding)
    missing = [c for c in (*cols, label_column) if c not in table.column_names]
    if missing:
        raise DatablameError(
            f"column {missing[0]!r} not in {p.name} (columns: {', '.join(table.column_names)})",
            "choose columns with --text-column and --label-column")
    if len(table) == 0:
        raise DatablameError(f"{p} has no examples", "give a file with at least one labelled row")
    columns = [_texts(table[c], c, p.name) for c in cols]
    texts: list[Text] = list(columns[0]) if len(cols) == 1 else list(zip(*columns))
    labels, names = _encode_labels(table[label_column], label_names, p.name)
    return Examples(texts=texts, labels=labels, label_names=names, path=str(p.resolve()),
                    fingerprint=fingerprint(p), text_columns=cols, label_column=label_column, encoding=encoding)


def _texts(values: list, column: str, source: str) -> list[str]:
    """A text column as strings: integers (a CSV column of numbers) as written; no text at all is refused."""
    for row, v in enumerate(values):
        if v is None:
            raise DatablameError(f"row {row} of {source} has no {column!r} (null)",
                                 "fill in or remove rows without text")
        if not isinstance(v, (str, int)):
            raise DatablameError(f"{column!r} at row {row} of {source} is a {type(v).__name__}, not text",
                                 f"store {column!r} as strings")
    return [v if isinstance(v, str) else str(v) for v in values]


def _encode_labels(raw: list, label_names: Sequence[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    for row, v in enumerate(raw):
        if v is None or v == "":
            raise DatablameError(f"row {row} of {source} has no label", "fill in or remove unlabelled rows")
        if isinstance(v, bool) or not isinstance(v, (str, int, np.integer)):
            raise DatablameError(f"the label at row {row} of {source} is a {type(v).__name__} ({v!r:.40})",
                                 "give one label per row, a string or an integer: datablame classifies each "
                                 "input into one class")
    is_int = all(isinstance(v, (int, np.integer)) for v in raw)
    if label_names is None:
        if is_int:
            if min(raw) < 0:
                raise DatablameError(f"negative integer label {min(raw)} in {source}",
                                     "integer labels must be class indexes 0, 1, …")
            names = [str(i) for i in range(max(raw) + 1)]
        else:
            names = sorted({str(v) for v in raw})
        if len({str(v) for v in raw}) < 2:
            raise DatablameError(f"every example in {source} has the label {str(raw[0])!r}",
                                 "a classifier needs examples of at least two classes")
        if is_int:
            return np.asarray(raw, dtype=np.int64), names
        label_names = names
    names = [str(n) for n in label_names]
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(raw), dtype=np.int64)
    for row, v in enumerate(raw):
        key = str(v)
        if key in index:
            out[row] = index[key]
        elif is_int and 0 <= int(v) < len(names):
            out[row] = int(v)
        else:
            raise DatablameError(f"unknown label {v!r} at row {row} of {source} (known: {', '.join(names)})",
                                 "fix the label or retrain with this label among the classes")
    return out, names
