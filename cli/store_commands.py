"""Commands over the store: ``scan``, ``flags WORKDIR list|accept|reject|relabel|reopen|add|undo|history``,
``export``."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Collection, List, Optional

import typer

from datablame.influence.registry import method_names

from .errors import report_errors
from .progress import QUIET, VERBOSE, console, log_verbosely, progress_bar
from .sharding import SHARD_ROWS, part_of

DB = typer.Option(None, "--db", help="SQLAlchemy URL of the store (default: SQLite file WORKDIR/datablame.db).")
WORKDIR = typer.Argument(..., help="Workdir made by 'datablame train' or 'datablame init'.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
WHO = typer.Option(None, "--who", help="Reviewer name (default: the user name).")
IDS = typer.Argument(..., help="Flag ids.")

flags_app = typer.Typer(no_args_is_help=True, help="Review flags: list, accept, reject, relabel, reopen, add, undo, "
                        "history.")


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
    method: str = typer.Option("cv", help="cv (the default: a head stacked on cross-validated linear heads, MLPs "
                               "and nearest neighbours), cv-mean (the heads' rank mean), cv-linear, cv-mlp or cv-knn "
                               f"(one kind alone), loss, {', '.join(method_names())} (by its self-influence), "
                               "combined (cv-linear + tracin), or aum (the area under the margin of the head's "
                               "training, replayed; --freeze-encoder workdirs)."),
    flag_top: float = typer.Option(0.05, "--flag-top", help="Fraction of examples to flag as open 'mislabeled'."),
    folds: int = typer.Option(5, help="Folds of the cross-validated heads."),
    repeats: int = typer.Option(3, help="Fold partitions of the cross-validated heads: one ranks the examples, the "
                                "others are fitted without the 10% most suspicious and averaged (1: one round)."),
    json_out: bool = typer.Option(False, "--json", help="Print every example, most suspicious first, as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Check the scan by retraining the head (frozen-encoder "
                                "workdirs): with the flagged examples relabeled to their suggested labels, "
                                "without them, and without as many random ones; each measured on --dev."),
    dev: Optional[Path] = typer.Option(None, "--dev", help="Labelled held-out data for --verify (the training "
                                       "data's columns and labels)."),
    db: Optional[str] = DB,
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N", help="Compute only part I of N of what the "
                                        "scan reads (the training features; for a scan by self-influence, also the "
                                        "vectors) and stop; when every part is done, the scan without --shard "
                                        "reads them. Under torchrun each rank takes its part and rank 0 scans."),
    shard_size: int = SHARD_ROWS,
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Rank every training example by how likely its label is wrong; store the scores, flag the top fraction.

    Writes the distribution of suspicion scores per class, with the flag threshold, to WORKDIR/plots/."""
    from datablame.store.scanning import run_scan

    from datablame.store.plots import scan_plot

    log_verbosely(verbose)
    if verify and dev is None:
        from datablame.influence.errors import DatablameError

        raise DatablameError("--verify measures the scan on labelled held-out data",
                             "give --dev FILE, with the training data's columns and labels")
    part = part_of(shard, shard_size)
    start = time.perf_counter()
    _, database = _open(workdir, db)
    with progress_bar("scan", quiet) as update:
        result = run_scan(workdir, method, flag_top, folds, repeats, database, device, update, part, shard_size)
    if result is None:  # a part's shards only
        if part is not None and not quiet:
            console.print(f"scan: part {part} of the training features done; when every part is, run 'datablame "
                          f"scan {workdir}'")
        return
    plot = scan_plot(workdir, result)
    check = None
    if verify:
        from datablame.store.scan_verify import verify_scan

        with progress_bar("verify", quiet):
            check = verify_scan(workdir, result, flag_top, dev, device="cpu" if device == "auto" else device)
    if json_out:
        print(json.dumps({"method": method, "examples": result.rows(),
                          **({"verification": check.to_json()} if check else {})}, ensure_ascii=False))
        return
    _table(f"most suspicious of {len(result.issues.order)}", ["id", "score", "label → suggested", "text"],
           [[r["id"], f"{r['score']:.3f}", _relabel(r["label"], r["suggested_label"]), r["text"]]
            for r in result.rows(10)])
    if not quiet:
        console.print(f"{method}: {result.record.flagged} new open 'mislabeled' flags (top {flag_top:.0%}) in "
                      f"{time.perf_counter() - start:.1f} s; review them with 'datablame flags {workdir} list'; "
                      f"plot → {plot}")
    if check:
        _print_scan_check(check)


def _print_scan_check(check) -> None:
    """The verification's accuracies and losses, one line each, changes against the original head."""
    console.print(f"verify on {check.dev} ({check.dev_examples} examples), the head retrained "
                  f"({check.seconds:.1f} s):")
    for what, values, unit in (("accuracy", check.accuracy, ""), ("loss", check.loss, " nats")):
        base = values["original"]
        console.print(f"  {what}: original {base:.4f}{unit}; {check.flagged} flagged relabeled "
                      f"{values['relabeled']:.4f} ({values['relabeled'] - base:+.4f}), removed "
                      f"{values['removed']:.4f} ({values['removed'] - base:+.4f}); as many random removed "
                      f"{statistics.fmean(values['removed_random']):.4f} ± "
                      f"{statistics.pstdev(values['removed_random']):.4f}", highlight=False)


def _table(title: str, columns: list[str], rows: list[list], wrap: Collection[str] = ()) -> None:
    """Print a table on stdout that fits the terminal's width (COLUMNS; 80 when not a terminal).

    Each row is one line: the last column (the text) gets the width the others leave, and a cell that does not
    fit is cut with "…". The columns named in ``wrap`` share the width left too, but wrap their cells in full."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, no_wrap=column != columns[-1] and column not in wrap)  # no_wrap: keeps its width
    for row in rows:
        table.add_row(*(_cell(value, column in wrap) for column, value in zip(columns, row)))
    Console().print(table)


def _cell(value, wrap: bool):
    """A table cell: the value as plain text (no rich markup), its whitespace (line breaks too) collapsed to single
    spaces; cut with "…" where it does not fit, or wrapped if ``wrap``."""
    from rich.text import Text

    text = " ".join(str("" if value is None else value).split())
    return Text(text, overflow="fold") if wrap else Text(text, no_wrap=True, overflow="ellipsis")


def _relabel(label: str, new_label: Optional[str]) -> str:
    """``label → new_label``, or just the label when there is no new one."""
    return label if new_label is None else f"{label} → {new_label}"


@flags_app.callback()
def flags(ctx: typer.Context, workdir: Path = WORKDIR) -> None:
    """Review flags of a workdir's training data."""
    ctx.obj = workdir


@flags_app.command("list")
@report_errors
def list_flags(ctx: typer.Context, status: Optional[str] = typer.Option(None, help="open|accepted|rejected|relabeled"),
               kind: Optional[str] = typer.Option(None, help="mislabeled|biased|duplicate|other"),
               wide: bool = typer.Option(False, "--wide", "-w", help="Every field (kind, source, reviewer, note, "
                                         "last change), nothing cut: cells wrap (for a wide terminal)."),
               json_out: bool = JSON, db: Optional[str] = DB,
               quiet: bool = QUIET,  # no message to silence: the table is the result
               verbose: bool = VERBOSE) -> None:
    """List flags, oldest first: one line each, the label → the suggested (or the reviewer's) label, the text cut
    to the terminal's width (see --wide, --json)."""
    from datablame.store import flags as store_flags

    log_verbosely(verbose)
    database, dataset = _dataset(ctx.obj, db)
    found = store_flags.list_flags(database, dataset, status, kind)
    if json_out:
        print(json.dumps([asdict(f) | {"updated_at": f.updated_at.isoformat()} for f in found], ensure_ascii=False))
    else:
        _flags_table(found, wide)


def _flags_table(found: list, wide: bool) -> None:
    """The flags as a table, one line each: id, example, status, label → new label, text (cut); the kind too when
    they differ. With ``wide``, every field, nothing cut: all but the ids wrap."""
    columns = {"id": lambda f: f.id, "example": lambda f: f.example_id, "status": lambda f: f.status,
               "label → suggested": lambda f: _relabel(f.label, f.reviewer_label or f.suggested_label)}
    if wide or len({f.kind for f in found}) > 1:
        columns["kind"] = lambda f: f.kind
    if wide:
        columns |= {"source": lambda f: f.source, "who": lambda f: f.who, "note": lambda f: f.note,
                    "updated (UTC)": lambda f: f.updated_at.strftime("%Y-%m-%d %H:%M")}
    columns["text"] = lambda f: f.text
    _table(f"{len(found)} flags", list(columns), [[get(f) for get in columns.values()] for f in found],
           wrap=list(columns)[2:] if wide else ())


def _set_status(ctx: typer.Context, ids: List[int], status: str, who: Optional[str], db: Optional[str],
                quiet: bool, verbose: bool) -> None:
    from datablame.store.flags import set_status

    log_verbosely(verbose)
    database, dataset = _dataset(ctx.obj, db, write=True)
    changed = set_status(database, dataset, ids, status, who)
    if not quiet:
        console.print(f"{changed} flags {status}")


@flags_app.command()
@report_errors
def accept(ctx: typer.Context, ids: List[int] = IDS, who: Optional[str] = WHO, db: Optional[str] = DB,
           quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Accept flags: export applies their suggested label (or drops the examples with --drop)."""
    _set_status(ctx, ids, "accepted", who, db, quiet, verbose)


@flags_app.command()
@report_errors
def reject(ctx: typer.Context, ids: List[int] = IDS, who: Optional[str] = WHO, db: Optional[str] = DB,
           quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Reject flags: export leaves their examples as they are."""
    _set_status(ctx, ids, "rejected", who, db, quiet, verbose)


@flags_app.command()
@report_errors
def reopen(ctx: typer.Context, ids: List[int] = IDS, who: Optional[str] = WHO, db: Optional[str] = DB,
           quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Open flags again for review: export leaves their examples as they are until they are decided."""
    _set_status(ctx, ids, "open", who, db, quiet, verbose)


@flags_app.command()
@report_errors
def undo(ctx: typer.Context, who: Optional[str] = WHO, db: Optional[str] = DB,
         quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Undo your latest review action (accept, reject, relabel or reopen, of one flag or many at once): its flags
    get back what they had before. Refused if someone changed one of them since."""
    from datablame.store.flags import undo as undo_latest

    log_verbosely(verbose)
    database, dataset = _dataset(ctx.obj, db, write=True)
    ids = undo_latest(database, dataset, who)
    if not quiet:
        console.print(f"undone: flag{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}")


@flags_app.command()
@report_errors
def history(ctx: typer.Context, flag_id: Optional[int] = typer.Argument(None, metavar="[ID]",
                                                                       help="Only this flag's history."),
            limit: int = typer.Option(50, help="Newest entries to show."), json_out: bool = JSON,
            db: Optional[str] = DB, quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """The review log, newest first: when, who, what, on which flag, status (label) before → after."""
    from datablame.store.flags import history as review_history

    log_verbosely(verbose)
    database, dataset = _dataset(ctx.obj, db)
    events = review_history(database, dataset, flag_id, limit)
    if json_out:
        print(json.dumps([asdict(e) | {"at": e.at.isoformat()} for e in events], ensure_ascii=False))
        return

    def state(s: Optional[dict]) -> str:
        return "" if s is None else s["status"] + (f" ({s['reviewer_label']})" if s["reviewer_label"] else "")

    _table(f"{len(events)} review events", ["when (UTC)", "who", "action", "flag", "before → after", "undone"],
           [[e.at.strftime("%Y-%m-%d %H:%M:%S"), e.who, e.action, e.flag_id,
             f"{state(e.before)} → {state(e.after)}" if e.before else state(e.after), "yes" if e.undone_by else ""]
            for e in events])


@flags_app.command()
@report_errors
def relabel(ctx: typer.Context, flag_id: int = typer.Argument(..., metavar="ID", help="Flag id."),
            label: str = typer.Option(..., "--label", help="The right label."),
            note: Optional[str] = typer.Option(None, help="Why."), who: Optional[str] = WHO,
            db: Optional[str] = DB, quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Give a flagged example the reviewer's label."""
    from datablame.store.flags import relabel as relabel_flag

    log_verbosely(verbose)
    database, dataset = _dataset(ctx.obj, db, write=True)
    relabel_flag(database, dataset, flag_id, label, who, note)
    if not quiet:
        console.print(f"flag {flag_id} relabeled {label}")


@flags_app.command()
@report_errors
def add(ctx: typer.Context, example_id: int = typer.Argument(..., metavar="ID", help="Example id (0-based row)."),
        kind: str = typer.Option(..., help="mislabeled|biased|duplicate|other"),
        note: str = typer.Option("", help="Why."),
        label: Optional[str] = typer.Option(None, "--label", help="Suggested label (for mislabeled)."),
        who: Optional[str] = WHO, db: Optional[str] = DB, quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Flag an example yourself; prints the new flag's id."""
    from datablame.influence.workdir import Workdir
    from datablame.store.flags import add_flag
    from datablame.store.scans import ensure_dataset, find_dataset

    log_verbosely(verbose)
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
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    """Write the cleaned dataset (reviewers' decisions applied) and a change log beside it (OUT.changes.csv).

    Refuses, before writing anything, to overwrite the training data, the store, the workdir's files or a folder
    it did not create (see --force)."""
    from datablame.store.export import export as export_dataset

    log_verbosely(verbose)
    database, dataset = _dataset(workdir, db)
    report = export_dataset(database, dataset, out, fmt, drop, workdir, force)
    if not quiet:
        console.print(f"{report.rows} examples ({report.relabeled} relabeled, {report.dropped} dropped) → "
                      f"{report.out}; changes → {report.changes_path}")
    print(report.out)


def register(app: typer.Typer) -> None:
    """Add the store's commands to the ``datablame`` app."""
    app.command()(scan)
    app.add_typer(flags_app, name="flags")
    app.command()(export)
