"""Commands over the store: ``scan``, ``flags WORKDIR list|accept|reject|relabel|add``, ``export``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer

from datablame.influence.registry import method_names

from .errors import report_errors
from .progress import QUIET, VERBOSE, console, log_verbosely, progress_bar

DB = typer.Option(None, "--db", help="SQLAlchemy URL of the store (default: SQLite file WORKDIR/datablame.db).")
WORKDIR = typer.Argument(..., help="Workdir made by 'datablame train' or 'datablame init'.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
WHO = typer.Option(None, "--who", help="Reviewer name (default: the user name).")

flags_app = typer.Typer(no_args_is_help=True, help="Review flags: list, accept, reject, relabel, add.")


def _open(workdir: Path, db: Optional[str], write: bool = True):
    """The workdir's config and its store; ``write=False`` for commands that only read it (a read-only store is
    then served instead of refused)."""
    from datablame.influence.workdir import Workdir
    from datablame.store.db import default_url, open_db

    config = Workdir(workdir).load()
    return config, open_db(db or default_url(workdir), write=write)


def _dataset(workdir: Path, db: Optional[str], write: bool = False):
    """The store and the workdir's dataset in it (read-only unless ``write``)."""
    from datablame.store.scans import find_dataset

    config, database = _open(workdir, db, write)
    return database, find_dataset(database, config.data_fingerprint)


@report_errors
def scan(
    workdir: Path = WORKDIR,
    method: str = typer.Option("cv", help="cv (cross-validated heads, the default), loss, "
                               f"{', '.join(method_names())} (by its self-influence), or combined (cv + tracin)."),
    flag_top: float = typer.Option(0.05, "--flag-top", help="Fraction of examples to flag as open 'mislabeled'."),
    folds: int = typer.Option(5, help="Folds of the cross-validated head."),
    repeats: int = typer.Option(3, help="Fold partitions the cross-validated probabilities are averaged over."),
    json_out: bool = typer.Option(False, "--json", help="Print every example, most suspicious first, as JSON."),
    db: Optional[str] = DB,
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Rank every training example by how likely its label is wrong; store the scores, flag the top fraction.

    Writes the distribution of suspicion scores per class, with the flag threshold, to WORKDIR/plots/."""
    from datablame.store.scans import scan_workdir

    from datablame.store.plots import scan_plot

    log_verbosely(verbose)
    start = time.perf_counter()
    _, database = _open(workdir, db)
    with progress_bar("scan", quiet) as update:
        result = scan_workdir(workdir, method, flag_top, folds, repeats, database, device, update)
    plot = scan_plot(workdir, result)
    if json_out:
        print(json.dumps({"method": method, "examples": result.rows()}, ensure_ascii=False))
        return
    _table(["id", "score", "label", "suggested_label", "text"], result.rows(10),
           f"most suspicious of {len(result.issues.order)}")
    if not quiet:
        console.print(f"{method}: {result.record.flagged} new open 'mislabeled' flags (top {flag_top:.0%}) in "
                      f"{time.perf_counter() - start:.1f} s; review them with 'datablame flags {workdir} list'; "
                      f"plot → {plot}")


def _table(columns: list[str], rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console().print(table)


@flags_app.callback()
def flags(ctx: typer.Context, workdir: Path = WORKDIR) -> None:
    """Review flags of a workdir's training data."""
    ctx.obj = workdir


@flags_app.command("list")
@report_errors
def list_flags(ctx: typer.Context, status: Optional[str] = typer.Option(None, help="open|accepted|rejected|relabeled"),
               kind: Optional[str] = typer.Option(None, help="mislabeled|biased|duplicate|other"),
               json_out: bool = JSON, db: Optional[str] = DB) -> None:
    """List flags, oldest first."""
    from datablame.store import flags as store_flags

    database, dataset = _dataset(ctx.obj, db)
    found = [asdict(f) | {"updated_at": f.updated_at.isoformat()} for f in
             store_flags.list_flags(database, dataset, status, kind)]
    if json_out:
        print(json.dumps(found, ensure_ascii=False))
    else:
        _table(["id", "example_id", "kind", "source", "status", "label", "suggested_label", "reviewer_label", "who",
                "note", "text"], found, f"{len(found)} flags")


def _set_status(ctx: typer.Context, ids: List[int], status: str, who: Optional[str], db: Optional[str]) -> None:
    from datablame.store.flags import set_status

    database, dataset = _dataset(ctx.obj, db, write=True)
    console.print(f"{set_status(database, dataset, ids, status, who)} flags {status}")


@flags_app.command()
@report_errors
def accept(ctx: typer.Context, ids: List[int] = typer.Argument(..., help="Flag ids."), who: Optional[str] = WHO,
           db: Optional[str] = DB) -> None:
    """Accept flags: export applies their suggested label (or drops the examples with --drop)."""
    _set_status(ctx, ids, "accepted", who, db)


@flags_app.command()
@report_errors
def reject(ctx: typer.Context, ids: List[int] = typer.Argument(..., help="Flag ids."), who: Optional[str] = WHO,
           db: Optional[str] = DB) -> None:
    """Reject flags: export leaves their examples as they are."""
    _set_status(ctx, ids, "rejected", who, db)


@flags_app.command()
@report_errors
def relabel(ctx: typer.Context, flag_id: int = typer.Argument(..., metavar="ID", help="Flag id."),
            label: str = typer.Option(..., "--label", help="The right label."),
            note: Optional[str] = typer.Option(None, help="Why."), who: Optional[str] = WHO,
            db: Optional[str] = DB) -> None:
    """Give a flagged example the reviewer's label."""
    from datablame.store.flags import relabel as relabel_flag

    database, dataset = _dataset(ctx.obj, db, write=True)
    relabel_flag(database, dataset, flag_id, label, who, note)
    console.print(f"flag {flag_id} relabeled {label}")


@flags_app.command()
@report_errors
def add(ctx: typer.Context, example_id: int = typer.Argument(..., metavar="ID", help="Example id (0-based row)."),
        kind: str = typer.Option(..., help="mislabeled|biased|duplicate|other"),
        note: str = typer.Option("", help="Why."),
        label: Optional[str] = typer.Option(None, "--label", help="Suggested label (for mislabeled)."),
        who: Optional[str] = WHO, db: Optional[str] = DB) -> None:
    """Flag an example yourself."""
    from datablame.influence.workdir import Workdir
    from datablame.store.flags import add_flag
    from datablame.store.scans import ensure_dataset, find_dataset

    config, database = _open(ctx.obj, db)
    ensure_dataset(database, Workdir(ctx.obj).load_examples(config))
    flag = add_flag(database, find_dataset(database, config.data_fingerprint), example_id, kind, note,
                    suggested_label=label, who=who)
    print(flag)


@report_errors
def export(
    workdir: Path = WORKDIR,
    out: Path = typer.Option(..., "--out", help="Cleaned dataset to write (a folder for --format hf)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv|jsonl|parquet|hf (default: from --out's suffix)."),
    drop: bool = typer.Option(False, "--drop", help="Drop accepted examples instead of relabeling them."),
    force: bool = typer.Option(False, "--force", help="Also write onto the training data, an existing file in the "
                               "workdir that export did not write, or an existing folder (adding files, deleting "
                               "nothing). The workdir's own files and the store are never overwritten."),
    db: Optional[str] = DB,
) -> None:
    """Write the cleaned dataset (reviewers' decisions applied) and a change log beside it (OUT.changes.csv).

    Refuses, before writing anything, to overwrite the training data, the store, the workdir's files or a folder
    it did not create (see --force)."""
    from datablame.store.export import export as export_dataset

    database, dataset = _dataset(workdir, db)
    report = export_dataset(database, dataset, out, fmt, drop, workdir, force)
    console.print(f"{report.rows} examples ({report.relabeled} relabeled, {report.dropped} dropped) → {report.out}; "
                  f"changes → {report.changes_path}")
    print(report.out)


def register(app: typer.Typer) -> None:
    """Add the store's commands to the ``datablame`` app."""
    app.command()(scan)
    app.add_typer(flags_app, name="flags")
    app.command()(export)
