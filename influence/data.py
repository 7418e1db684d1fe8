"""Loading labelled text data: CSV, TSV, JSONL/JSON, parquet or a saved ``datasets`` folder.

An example's id is its 0-based row in the file, everywhere in datablame.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from .errors import DatablameError

Text = Union[str, tuple[str, str]]
"""One input: a sentence, or a pair of sentences (e.g. premise, hypothesis) for NLI."""

_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
            label_column=self.label_column, ids=self.ids[ids],
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


def load_table(path: Path):
    """The data file (or saved datasets folder) as a ``datasets.Dataset``, all its columns."""
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure here means "not a saved dataset"
            raise DatablameError(f"{path} is a folder but not a saved datasets folder ({exc})",
                                 "pass a CSV, TSV, JSONL or parquet file, or a folder from Dataset.save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return ds
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatablameError(f"unknown data format {path.suffix!r} for {path}",
                             "use .csv, .tsv, .jsonl, .json or .parquet, or a saved datasets folder")
    if path.stat().st_size == 0:
        raise DatablameError(f"{path} is empty", "give a file with a header row and at least one example")
    kwargs = {}
    if path.suffix.lower() == ".tsv":
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - parser errors become one line
        raise DatablameError(f"could not read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             "check the file's format and encoding") from None


def load_examples(
    path: str | os.PathLike,
    text_column: str | Sequence[str] = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> Examples:
    """Load a labelled text dataset.

    Labels may be strings or integers. With ``label_names`` given (e.g. from a workdir), every label must be
    one of them (or an integer index into them); without, they are the sorted distinct labels, and integer
    labels keep their values (names ``"0" … str(max)``).
    Raises DatablameError on a missing file or column, an empty file, an unknown or empty label.
    """
    p = Path(path)
    if not p.exists():
        raise DatablameError(f"data file {p} not found", "check the path")
    cols = parse_text_columns(text_column)
    ds = load_table(p)
    missing = [c for c in (*cols, label_column) if c not in ds.column_names]
    if missing:
        raise DatablameError(
            f"column {missing[0]!r} not in {p.name} (columns: {', '.join(ds.column_names)})",
            "choose columns with --text-column and --label-column")
    if len(ds) == 0:
        raise DatablameError(f"{p} has no examples", "give a file with at least one labelled row")
    raw_labels = ds[label_column]
    if any(v is None for v in raw_labels):
        row = next(i for i, v in enumerate(raw_labels) if v is None)
        raise DatablameError(f"row {row} of {p.name} has no label", "fill in or remove unlabelled rows")
    columns = [["" if t is None else str(t) for t in ds[c]] for c in cols]
    texts: list[Text] = list(columns[0]) if len(cols) == 1 else list(zip(*columns))
    labels, names = _encode_labels(list(raw_labels), label_names, p.name)
    return Examples(texts=texts, labels=labels, label_names=names, path=str(p.resolve()),
                    fingerprint=fingerprint(p), text_columns=cols, label_column=label_column)


def _encode_labels(raw: list, label_names: Sequence[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    is_int = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw)
    if label_names is None:
        if is_int:
            if min(raw) < 0:
                raise DatablameError(f"negative integer label {min(raw)} in {source}",
                                     "integer labels must be class indexes 0, 1, …")
            names = [str(i) for i in range(max(raw) + 1)]
            return np.asarray(raw, dtype=np.int64), names
        names = sorted({str(v) for v in raw})
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
