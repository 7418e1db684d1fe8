"""The cleaned dataset: the training data with the reviewers' decisions applied, and a change log beside it.

Per example, the flags decide (the latest decision first when several apply):

- a ``relabeled`` flag → the reviewer's label;
- an ``accepted`` flag with a suggested label (e.g. a scan's ``mislabeled`` flag) → the suggested label, or the
  example is dropped with ``drop=True``;
- an ``accepted`` flag without one (``biased``, ``duplicate``, …) → dropped with ``drop=True``, else unchanged;
- ``open`` and ``rejected`` flags → unchanged.

Formats: csv, jsonl, parquet (one file each) or hf (a ``datasets`` folder from ``save_to_disk``). Columns: ``id``
(the original row), the text column(s), the label column (label names), then the data file's other columns as
they were (when the file is still there unchanged; the store holds only texts and labels). The change log ``OUT.changes.csv``
lists ``id, old_label, new_label, reason`` (new_label empty for a dropped example). Both are written to a
temporary name and renamed: whole or absent.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from datablame.influence.errors import DatablameError
from datablame.influence.workdir import atomic_write_bytes

from .db import Database
from .schema import Dataset, Example, Flag

FORMATS = ("csv", "jsonl", "parquet", "hf")


@dataclass
class Change:
    """One example's change: old and new label names (new None when dropped) and why."""

    id: int
    old_label: str
    new_label: str | None
    reason: str


@dataclass
class ExportReport:
    rows: int
    relabeled: int
    dropped: int
    out: Path
    changes_path: Path


def _decide(flags: list[Flag], names: list[str], old: str, drop: bool) -> Change | None:
    """The change the flags on one example make (flags sorted newest decision first)."""
    for f in flags:
        if f.status == "relabeled" and f.reviewer_label is not None:
            by = f" by {f.who}" if f.who else ""
            return Change(f.example_id, old, names[f.reviewer_label],
                          f"flag {f.id} ({f.kind}) relabeled{by}" + (f": {f.note}" if f.note else ""))
    for f in flags:
        if f.status == "accepted" and (drop or f.suggested_label is not None):
            what = f"flag {f.id} ({f.kind}, from {f.source}) accepted"
            if drop:
                return Change(f.example_id, old, None, what + ", dropped")
            return Change(f.example_id, old, names[f.suggested_label], what)
    return None


def other_columns(dataset: Dataset) -> dict[str, list]:
    """The data file's columns besides id, text and label (name → value per row), when the file is still there
    and unchanged; else none."""
    from datablame.influence.data import fingerprint, load_table

    path = Path(dataset.path)
    if not path.exists() or fingerprint(path) != dataset.fingerprint:
        return {}
    table = load_table(path)
    known = {"id", *dataset.text_columns, dataset.label_column}
    return {c: table[c] for c in table.column_names if c not in known}


def cleaned_rows(db: Database, dataset: Dataset, drop: bool = False) -> tuple[list[dict], list[Change]]:
    """The cleaned rows (id, text column(s), label column, the file's other columns) in id order and the changes
    made."""
    names = dataset.label_names
    other = other_columns(dataset)
    with db.transaction() as session:
        examples = session.scalars(select(Example).where(Example.dataset_id == dataset.id)
                                   .order_by(Example.id)).all()
        decided = session.scalars(select(Flag).where(Flag.dataset_id == dataset.id,
                                                     Flag.status.in_(("accepted", "relabeled")))
                                  .order_by(Flag.updated_at.desc(), Flag.id.desc())).all()
    by_example: dict[int, list[Flag]] = {}
    for f in decided:
        by_example.setdefault(f.example_id, []).append(f)
    rows, changes = [], []
    for e in examples:
        old = names[e.label]
        change = _decide(by_example.get(e.id, []), names, old, drop)
        if change is not None and change.new_label != old:
            changes.append(change)
        if change is not None and change.new_label is None:
            continue
        texts = [e.text] if e.text_pair is None else [e.text, e.text_pair]
        rows.append({"id": e.id, **dict(zip(dataset.text_columns, texts)),
                     dataset.label_column: change.new_label if change is not None else old,
                     **{c: values[e.id] for c, values in other.items()}})
    return rows, changes


def _csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _write(rows: list[dict], columns: list[str], out: Path, fmt: str) -> None:
    if fmt == "csv":
        atomic_write_bytes(out, _csv_bytes(rows, columns))
    elif fmt == "jsonl":
        atomic_write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), buf)
        atomic_write_bytes(out, buf.getvalue())
    else:
        import datasets

        datasets.disable_progress_bars()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns}).save_to_disk(str(tmp / "d"))
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
            os.replace(tmp / "d", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def export_format(out: Path, fmt: str | None) -> str:
    """The format asked for, or the one ``out``'s suffix names."""
    if fmt is None:
        fmt = out.suffix.lower().lstrip(".")
        if fmt not in FORMATS[:3]:
            raise DatablameError(f"cannot tell the format of {out} from its name",
                                 f"pass --format {'|'.join(FORMATS)} or name the file .csv, .jsonl or .parquet")
    if fmt not in FORMATS:
        raise DatablameError(f"unknown format {fmt!r}", f"use --format {'|'.join(FORMATS)}")
    return fmt


def changes_path(out: Path) -> Path:
    """Where the change log of ``out`` goes: ``clean.csv`` → ``clean.changes.csv``, folder ``clean`` →
    ``clean.changes.csv``."""
    return out.with_name((out.stem if out.suffix else out.name) + ".changes.csv")


def export(db: Database, dataset: Dataset, out: str | os.PathLike, fmt: str | None = None,
           drop: bool = False) -> ExportReport:
    """Write the cleaned dataset to ``out`` and its change log beside it."""
    out = Path(out)
    fmt = export_format(out, fmt)
    rows, changes = cleaned_rows(db, dataset, drop)
    columns = list(rows[0]) if rows else ["id", *dataset.text_columns, dataset.label_column]
    _write(rows, columns, out, fmt)
    log = changes_path(out)
    atomic_write_bytes(log, _csv_bytes([{"id": c.id, "old_label": c.old_label, "new_label": c.new_label or "",
                                         "reason": c.reason} for c in changes],
                                       ["id", "old_label", "new_label", "reason"]))
    dropped = sum(c.new_label is None for c in changes)
    return ExportReport(len(rows), len(changes) - dropped, dropped, out, log)
