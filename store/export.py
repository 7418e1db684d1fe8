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
lists ``id, old_label, new_label, reason`` (new_label empty for a dropped example). CSV is RFC 4180 (UTF-8, CRLF
line ends, fields quoted when they hold a comma, quote or line break); JSONL is UTF-8 JSON, one object a line.

Export never destroys anything (:func:`check_target`): it refuses to write onto the training data, the store, a
workdir's own files, any other existing path inside the workdir that an earlier export did not create
(``WORKDIR/exports.json`` lists those), or an existing folder, unless ``force``; it never deletes a folder it did
not create (its hf folders carry a ``.datablame-export`` marker) nor the workdir's own files, even with ``force``.
Both files are written to a temporary name and renamed (whole or absent), with the umask's permissions.
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
from datablame.influence.atomic import atomic_folder, atomic_write_bytes, atomic_write_json
from datablame.influence.tables import DEFAULT_ENCODING
from datablame.influence.workdir import Workdir

from .db import Database
from .schema import Dataset, Example, Flag

FORMATS = ("csv", "jsonl", "parquet", "hf")
MARKER = ".datablame-export"
"""A file inside every hf folder that export writes: the sign that a later export may replace the folder."""


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


def other_columns(dataset: Dataset, encoding: str = DEFAULT_ENCODING) -> dict[str, list]:
    """The data file's columns besides id, text and label (name → value per row), when the file is still there
    and unchanged; else none."""
    from datablame.influence.data import fingerprint
    from datablame.influence.tables import read_table

    path = Path(dataset.path)
    if not path.exists() or fingerprint(path) != dataset.fingerprint:
        return {}
    table = read_table(path, encoding)
    known = {"id", *dataset.text_columns, dataset.label_column}
    return {c: table[c] for c in table.column_names if c not in known}
def cleaned_rows(db: Database, dataset: Dataset, drop: bool = False, encoding: str = DEFAULT_ENCODING
                 ) -> tuple[list[dict], list[Change]]:
    """The cleaned rows (id, text column(s), label column, the file's other columns) in id order and the changes
    made. ``encoding``: the data file's, to read its other columns."""
    names = dataset.label_names
    other = other_columns(dataset, encoding)
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
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _write(rows: list[dict], columns: list[str], out: Path, fmt: str, replace_folder: bool) -> None:
    """Write the rows; an hf folder replaces ``out`` when ``replace_folder``, else its files go into ``out``."""
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
        table = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
        if replace_folder:
            with atomic_folder(out) as tmp:
                table.save_to_disk(str(tmp))
                (tmp / MARKER).write_text("written by datablame export; a later export may replace this folder\n")
        else:  # --force into a folder export did not create: its files are added, nothing of it deleted
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
            try:
                table.save_to_disk(str(tmp))
                for f in tmp.iterdir():
                    os.replace(f, out / f.name)
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


def _recorded(workdir: Workdir | None) -> set[str]:
    """The paths earlier exports wrote inside the workdir."""
    if workdir is None or not workdir.exports_record.is_file():
        return set()
    try:
        return set(json.loads(workdir.exports_record.read_text()).get("paths", []))
    except (ValueError, AttributeError):
        return set()


def check_target(path: Path, fmt: str, dataset: Dataset, db: Database, workdir: Workdir | None,
                 force: bool) -> bool:
    """Refuse to write the export (or its change log) at ``path`` when that could destroy data; see the module
    docstring. Returns whether an existing folder at ``path`` is to be replaced (an earlier export's)."""
    target = path.resolve()
    what = f"--out {path}"
    if db.path is not None and target in {Path(f"{db.path}{end}").resolve() for end in ("", "-wal", "-shm")}:
        raise DatablameError(f"{what} is the store {db.path}", "choose another --out")
    if workdir is not None and target == workdir.root.resolve():
        raise DatablameError(f"{what} is the workdir", f"name a file, e.g. {workdir.root / 'cleaned.csv'}")
    if workdir is not None and workdir.owns(target):
        raise DatablameError(f"{what} is one of the workdir's own files", "choose another --out, e.g. "
                             f"{workdir.root / 'cleaned.csv'} or a file outside the workdir")
    data = Path(dataset.path).resolve()
    if not force and (target == data or data in target.parents or target in data.parents):
        raise DatablameError(f"{what} would overwrite the training data {data}",
                             "write the cleaned data to a new file, or pass --force to replace the training data "
                             "(the workdir then refuses to run until you retrain on it)")
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_dir():
        if fmt != "hf":
            raise DatablameError(f"{what} is an existing folder", f"name a file, e.g. {path / ('clean.' + fmt)}")
        if (path / MARKER).is_file():
            return True
        if not force:
            raise DatablameError(f"{what} is an existing folder that export did not create",
                                 "choose a new folder, or pass --force to add the dataset's files to it "
                                 "(nothing in it is deleted)")
        return False
    inside = workdir is not None and workdir.root.resolve() in target.parents
    if inside and not force and str(target) not in _recorded(workdir):
        raise DatablameError(f"{what} already exists in the workdir and export did not write it",
                             "choose a new file name, or pass --force to overwrite it")
    return False


def export(db: Database, dataset: Dataset, out: str | os.PathLike, fmt: str | None = None, drop: bool = False,
           workdir: str | os.PathLike | None = None, force: bool = False) -> ExportReport:
    """Write the cleaned dataset to ``out`` and its change log beside it.

    ``workdir``: the dataset's workdir, whose files export protects and whose config gives the data file's
    encoding. ``force``: write onto the training data, an existing file in the workdir or a folder export did
    not create (see :func:`check_target`). Raises DatablameError before writing anything when refused.
    """
    out = Path(out)
    fmt = export_format(out, fmt)
    wd = Workdir(workdir) if workdir is not None else None
    log = changes_path(out)
    replace_folder = check_target(out, fmt, dataset, db, wd, force)
    check_target(log, "csv", dataset, db, wd, force)
    encoding = wd.load().encoding if wd is not None else DEFAULT_ENCODING
    rows, changes = cleaned_rows(db, dataset, drop, encoding)
    columns = list(rows[0]) if rows else ["id", *dataset.text_columns, dataset.label_column]
    _write(rows, columns, out, fmt, replace_folder or not out.is_dir())
    atomic_write_bytes(log, _csv_bytes([{"id": c.id, "old_label": c.old_label, "new_label": c.new_label or "",
                                         "reason": c.reason} for c in changes],
                                       ["id", "old_label", "new_label", "reason"]))
    if wd is not None:
        inside = [str(p.resolve()) for p in (out, log) if wd.root.resolve() in p.resolve().parents]
        if inside:
            atomic_write_json(wd.exports_record, {"paths": sorted(_recorded(wd) | set(inside))})
    dropped = sum(c.new_label is None for c in changes)
    return ExportReport(len(rows), len(changes) - dropped, dropped, out, log)
