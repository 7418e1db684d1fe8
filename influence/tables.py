"""Reading a data file into columns, faithfully: text is read as text.

No value is ever parsed into a missing value (``NA``, ``null``, ``None``, ``nan`` and ``N/A`` stay the strings
they are) or into a number, except that a CSV/TSV column whose every non-empty cell is a canonical integer
(``0``, ``17``, ``-3``; not ``01``, ``-0`` or ``+1``) is read as integers: integer class labels. An empty CSV/TSV cell is
``""``; a missing JSON key or a null is ``None``. Formats:

- ``.csv``: RFC 4180 (quoted fields may hold commas, quotes, newlines, tabs and NUL);
- ``.tsv``: one row per line, fields split on tabs, quotes kept as they are (as in GLUE);
- ``.jsonl`` / ``.json``: one JSON object per line, or (``.json``) one array of objects;
- ``.parquet``, or a folder written by ``datasets.Dataset.save_to_disk``.

Bytes are decoded as UTF-8 (a leading BOM is dropped) unless another encoding is named. Every problem is one
:class:`DatablameError` naming the file, the line or row, and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import DatablameError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
DEFAULT_ENCODING = "utf-8"
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


@dataclass
class Table:
    """Named columns of equal length, in the file's order: ``columns[name][row]``."""

    columns: dict[str, list]

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __getitem__(self, name: str) -> list:
        return self.columns[name]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))


def read_table(path: str | Path, encoding: str = DEFAULT_ENCODING) -> Table:
    """The data file (or saved ``datasets`` folder) at ``path`` as a :class:`Table`."""
    path = Path(path)
    if path.is_dir():
        return _read_saved(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatablameError(f"unknown data format {path.suffix!r} for {path}",
                             "use .csv, .tsv, .jsonl, .json or .parquet, or a saved datasets folder")
    if path.stat().st_size == 0:
        raise DatablameError(f"{path} is empty", "give a file with a header row and at least one example")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _decode(path, encoding)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    return _read_json(path, text)


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        return data.decode(codec)
    except LookupError:
        raise DatablameError(f"unknown encoding {encoding!r}", "pass --encoding utf-8, latin-1, cp1252, …") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatablameError(f"{path} is not valid {encoding} at line {line} (byte {exc.start}: "
                             f"{data[exc.start:exc.start + 1]!r})",
                             "pass --encoding with the file's encoding (e.g. --encoding latin-1), or save it as "
                             "UTF-8") from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    """CSV (quoted, RFC 4180) or TSV (no quoting): every cell a string, integer-only columns as ints."""
    if delimiter == "\t":
        rows = [line.split("\t") for line in re.split(r"\r?\n", text)]
        line_of = list(range(1, len(rows) + 1))
    else:
        csv.field_size_limit(sys.maxsize)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows, line_of = [], []
        try:
            for row in reader:
                rows.append(row)
                line_of.append(reader.line_num)
        except csv.Error as exc:
            raise DatablameError(f"{path} is not valid CSV at line {reader.line_num + 1} ({exc})",
                                 "quote fields that hold commas, quotes or newlines (\"like, this\")") from None
    kept = [(row, line) for row, line in zip(rows, line_of) if row and row != [""]]
    if not kept:
        raise DatablameError(f"{path} is empty", "give a file with a header row and at least one example")
    (header, _), body = kept[0], kept[1:]
    _check_header(path, header)
    for i, (row, line) in enumerate(body):
        if len(row) != len(header):
            hint = "quote fields that hold commas" if delimiter == "," else "a TSV field cannot hold a tab"
            raise DatablameError(f"row {i} (line {line}) of {path} has {len(row)} fields, the header has "
                                 f"{len(header)}", hint)
    columns = {name: [row[j] for row, _ in body] for j, name in enumerate(header)}
    for name, values in columns.items():
        if values and all(_INTEGER.fullmatch(v) for v in values if v != "") and any(values):
            columns[name] = [int(v) if v != "" else v for v in values]
    return Table(columns)


def _check_header(path: Path, header: list[str]) -> None:
    duplicated = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if duplicated is not None:
        raise DatablameError(f"column {duplicated!r} appears twice in the header of {path}",
                             "give every column a distinct name")


def _read_json(path: Path, text: str) -> Table:
    """JSON lines, or for ``.json`` a single array of objects; keys become columns (first seen first)."""
    records: list[tuple[int, object]]
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            raise DatablameError(f"{path} is not valid JSON at line {exc.lineno} ({exc.msg})",
                                 "fix the file, or write one JSON object per line") from None
        where = "element"
    else:
        records = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in a string
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatablameError(f"line {number} of {path} is not valid JSON ({exc.msg} at column {exc.colno})",
                                     "fix or remove that line: one JSON object per line") from None
        where = "line"
    if not records:
        raise DatablameError(f"{path} has no examples", "write one JSON object per line")
    names: dict[str, None] = {}
    for number, record in records:
        if not isinstance(record, dict):
            raise DatablameError(f"{where} {number} of {path} is a JSON {type(record).__name__}, not an object",
                                 'write one object per line, e.g. {"text": "…", "label": "…"}')
        names.update(dict.fromkeys(record))
    return Table({name: [record.get(name) for _, record in records] for name in names})


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        return Table(pq.read_table(path).to_pydict())
    except Exception as exc:  # noqa: BLE001 - any parser failure is one line
        raise DatablameError(f"could not read {path} as parquet ({str(exc).splitlines()[0]})",
                             "check that the file is a parquet file") from None


def _read_saved(path: Path) -> Table:
    import datasets

    datasets.disable_progress_bars()
    level = logging.getLogger("datasets").level
    logging.getLogger("datasets").setLevel(logging.ERROR)
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a saved dataset"
        raise DatablameError(f"{path} is a folder but not a saved datasets folder ({str(exc).splitlines()[0]})",
                             "pass a CSV, TSV, JSONL or parquet file, or a folder from Dataset.save_to_disk") from None
    finally:
        logging.getLogger("datasets").setLevel(level)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    return Table(ds.to_dict())
