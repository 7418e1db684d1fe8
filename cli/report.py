"""``datablame report WORKDIR``: one self-contained HTML page about a workdir's run.

The page holds, from top to bottom: the run's summary (data file, base model, labels with their example counts,
flags counted by kind and status), the flagged examples (open first, then by id) with their given and suggested
labels, review status as a coloured badge, reviewer, note and text; every PNG under ``WORKDIR/plots/`` (embedded
as a base64 data URI, captioned from its file name); the optional ``WORKDIR/demo.json`` as a "Demo: found vs
injected" table; and the details: scan runs with their parameters, the FAISS indexes under ``WORKDIR/index/``,
the checkpoints and the training settings.

Nothing is fetched: no external CSS, scripts, fonts or images, so the file can be mailed or archived as is.
Everything that comes from the user's data or the store is escaped with :func:`html.escape`. The page is written
atomically (a temporary file in the target's folder, then ``os.replace``). A workdir with no scan yet still gets
a page, saying so.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import report_errors
from .progress import QUIET, VERBOSE, log_verbosely
from .store_commands import DB, WORKDIR

OUT = typer.Option(None, "--out", help="HTML file to write (default: WORKDIR/report.html).")
STATUS_ORDER = ("open", "accepted", "rejected", "relabeled")
KIND_ORDER = ("mislabeled", "biased", "duplicate", "other")
REVIEW_COLUMNS = ("reviewer label", "who", "note")  # of the flags table: shown only when some flag has one


@dataclass
class Summary:
    """What the page says about the run besides flags, plots and the demo."""

    workdir: str
    data_path: str = ""
    base_model: str = ""
    label_names: list[str] = field(default_factory=list)
    label_counts: dict[str, int] | None = None  # examples per label (None: unknown)
    max_length: int | None = None
    checkpoints: list[dict] = field(default_factory=list)  # step, learning_rate, path
    training: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)  # method, parameters, created_at
    indexes: list[dict] = field(default_factory=list)  # IndexMeta JSON
    scanned: bool = False  # the store holds this workdir's data
    generated_at: str = ""


@dataclass
class Plot:
    """One embedded PNG: its file name and bytes."""

    name: str
    png: bytes

    @property
    def caption(self) -> str:
        """``scan-cv.png`` → ``scan: cv``; ``explain-my_query.png`` → ``explain: my query``."""
        kind, _, rest = Path(self.name).stem.partition("-")
        rest = rest.replace("_", " ").replace("-", " ")
        return f"{kind}: {rest}" if rest else kind.replace("_", " ")


# ----------------------------------------------------------------------------------------------- gathering


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _indexes(workdir: Path) -> list[dict]:
    from datablame.influence.workdir import Workdir

    found = []
    for path in sorted(Workdir(workdir).index_dir.glob("*.json")):
        meta = _read_json(path)
        if isinstance(meta, dict) and "method" in meta:
            found.append(meta)
    return found


def _plots(workdir: Path) -> list[Plot]:
    from datablame.influence.workdir import Workdir

    return [Plot(p.name, p.read_bytes()) for p in sorted(Workdir(workdir).plots_dir.glob("*.png")) if p.is_file()]


def _store(workdir: Path, config, db_url: str | None, summary: Summary, with_flags: bool = True) -> list:
    """Fill the store's part of ``summary`` (runs, label counts); return the flags (empty without a scan, or
    unless ``with_flags``)."""
    from datablame.influence.errors import DatablameError
    from datablame.influence.workdir import Workdir
    from datablame.store.db import default_url, open_db
    from datablame.store.flags import list_flags
    from datablame.store.scans import find_dataset
    from datablame.store.schema import Example, Run
    from sqlalchemy import func, select

    if db_url is None and not Workdir(workdir).store_path.is_file():
        return []  # no store yet: do not create one just to report that it is empty
    database = open_db(db_url or default_url(workdir), write=False)  # a read-only store is shown, not refused
    try:
        try:
            dataset = find_dataset(database, config.data_fingerprint)
        except DatablameError:
            return []
        summary.scanned = True
        with database.transaction() as session:
            summary.runs = [{"method": r.method, "parameters": r.parameters, "created_at": r.created_at}
                            for r in session.scalars(select(Run).where(Run.dataset_id == dataset.id)
                                                     .order_by(Run.created_at))]
            counts = dict(session.execute(select(Example.label, func.count()).where(Example.dataset_id == dataset.id)
                                          .group_by(Example.label)).all())
        summary.label_counts = {name: int(counts.get(i, 0)) for i, name in enumerate(dataset.label_names)}
        return list_flags(database, dataset) if with_flags else []
    finally:
        database.close()


def _label_counts_from_data(workdir: Path, config) -> dict[str, int] | None:
    from datablame.influence.errors import DatablameError
    from datablame.influence.workdir import Workdir

    try:
        examples = Workdir(workdir).load_examples(config)
    except (DatablameError, OSError, ValueError):
        return None
    return {name: int((examples.labels == i).sum()) for i, name in enumerate(config.label_names)}


def gather(workdir: Path, db_url: str | None = None, with_flags: bool = True
           ) -> tuple[Summary, list, list[Plot], dict | None]:
    """Everything the page shows: (summary, flags, plots, demo); without the flags unless ``with_flags``."""
    from datablame.influence.workdir import Workdir

    workdir = Path(workdir)
    config = Workdir(workdir).load()
    summary = Summary(
        workdir=str(workdir), data_path=config.data_path, base_model=config.base_model,
        label_names=list(config.label_names), max_length=config.max_length,
        checkpoints=[{"step": c.step, "learning_rate": c.learning_rate, "path": c.path} for c in config.checkpoints],
        training=dict(config.training or {}), indexes=_indexes(workdir),
        generated_at=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    flags = _store(workdir, config, db_url, summary, with_flags)
    if summary.label_counts is None:
        summary.label_counts = _label_counts_from_data(workdir, config)
    marker = Workdir(workdir).demo_marker
    demo = _read_json(marker) if marker.is_file() else None
    return summary, flags, _plots(workdir), demo if isinstance(demo, dict) else None


# ----------------------------------------------------------------------------------------------- rendering

STYLE = """
*{box-sizing:border-box}
body{margin:0;background:#f5f6f8;color:#1d2433;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}h3{font-size:15px;margin:16px 0 6px}
.sub{color:#5b6475;margin:0 0 18px}.sub code{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 16px;min-width:180px;flex:1}
.card .n{font-size:26px;font-weight:650}.card .k{color:#5b6475;font-size:12px;text-transform:uppercase;
letter-spacing:.04em}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8;border-radius:8px;
overflow:hidden}
th,td{padding:6px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #edf0f4}
th{background:#eef1f6;font-weight:600;font-size:12px;color:#3a4357;white-space:nowrap}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{min-width:180px;overflow-wrap:anywhere}td.note{min-width:120px;overflow-wrap:anywhere}
table.flags th,table.flags td{width:1%;white-space:nowrap}table.flags .text,table.flags .note{width:auto;
white-space:normal}
td.when{white-space:nowrap;color:#5b6475;font-size:12px}
table.compact{width:auto}table.compact td,table.compact th{padding-right:22px}
table.kv{width:auto;min-width:360px}table.kv th{text-align:left;background:#f6f8fb}
table.kv th,table.kv td{vertical-align:baseline}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.b-open{background:#d97706}.b-accepted{background:#15803d}.b-rejected{background:#6b7280}
.b-relabeled{background:#2563eb}.b-other{background:#7c3aed}
.arrow{color:#8a93a5}.muted{color:#8a93a5}
.notice{background:#fff7e6;border:1px solid #f2c56b;border-radius:8px;padding:12px 16px}
figure{margin:0 0 18px;background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px;display:inline-block;
max-width:100%}
figure img{display:block;max-width:100%;height:auto}
figcaption{color:#3a4357;margin-top:6px;font-size:13px}figcaption code{color:#8a93a5;font-size:11px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:16px;align-items:start}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
footer{color:#8a93a5;font-size:12px;margin-top:32px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    """A value as short text: floats to 4 significant digits, datetimes to minutes, containers as JSON."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M") + (" UTC" if value.tzinfo is None else "")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    return str(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], classes: Mapping[str, str] | None = None,
           css_class: str = "") -> str:
    """A table; cells are HTML already (escape before). classes: column → CSS class of its cells ("num", "text");
    css_class: the table's CSS class: "compact" (as wide as its content instead of the page) or "flags" (the text and
    note columns take the width the others, kept to their content, leave)."""
    classes = classes or {}

    def cell(tag: str, column: str, content: str) -> str:
        cls = classes.get(column)
        return f'<{tag} class="{cls}">{content}</{tag}>' if cls else f"<{tag}>{content}</{tag}>"

    head = "".join(cell("th", c, _e(c)) for c in columns)
    body = "".join("<tr>" + "".join(cell("td", c, v) for c, v in zip(columns, row)) + "</tr>" for row in rows)
    opening = f'<table class="{css_class}">' if css_class else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in items.items())
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _badge(status: str) -> str:
    cls = status if status in STATUS_ORDER else "other"
    return f'<span class="badge b-{cls}">{_e(status)}</span>'


def _card(number: Any, what: str, detail: str = "") -> str:
    return (f'<div class="card"><div class="k">{_e(what)}</div><div class="n">{_e(number)}</div>'
            f'<div class="muted">{detail}</div></div>')


def _order(values: Sequence[str], known: Sequence[str]) -> list[str]:
    return [v for v in known if v in values] + sorted(set(values) - set(known))


def _summary_cards(summary: Summary, by_status: Mapping[str, int]) -> str:
    """The summary's cards: training examples per label, flags by status ({status: count}), open ones, scan
    runs."""
    counts = summary.label_counts
    labels = ", ".join(f"{_e(n)} {counts[n]}" if counts else _e(n) for n in summary.label_names)
    n_examples = sum(counts.values()) if counts else "?"
    by_status = {s: by_status[s] for s in _order(list(by_status), STATUS_ORDER)}
    total = sum(by_status.values())
    cards = [_card(n_examples, "training examples", labels),
             _card(total, "flags", " · ".join(f"{_badge(s)} {n}" for s, n in by_status.items())),
             _card(by_status.get("open", 0), "open for review", f"{total - by_status.get('open', 0)} reviewed"),
             _card(len(summary.runs), "scan runs", _e(", ".join(r["method"] for r in summary.runs)) or "none")]
    return f'<div class="cards">{"".join(cards)}</div>'


def _summary_section(summary: Summary, flags: Sequence) -> str:
    statuses = [f.status for f in flags]
    parts = [f"<section><h2>Summary</h2>{_summary_cards(summary, {s: statuses.count(s) for s in set(statuses)})}"]
    if flags:
        kinds = _order([f.kind for f in flags], KIND_ORDER)
        statuses = _order([f.status for f in flags], STATUS_ORDER)
        rows = [[_e(k)] + [str(sum(f.kind == k and f.status == s for f in flags)) for s in statuses]
                + [str(sum(f.kind == k for f in flags))] for k in kinds]
        parts.append("<h3>Flags by kind and status</h3>"
                     + _table(["kind", *statuses, "total"], rows, dict.fromkeys([*statuses, "total"], "num"),
                              css_class="compact"))
    return "".join(parts) + "</section>"


def _flags_section(summary: Summary, flags: Sequence) -> str:
    if not summary.scanned:
        return (f'<section><h2>Flagged examples</h2><p class="notice">No scan yet: run '
                f'<code>datablame scan {_e(summary.workdir)}</code>, then <code>datablame report '
                f'{_e(summary.workdir)}</code> again.</p></section>')
    if not flags:
        return '<section><h2>Flagged examples</h2><p class="muted">No flags.</p></section>'
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    ordered = sorted(flags, key=lambda f: (f.status != "open", rank.get(f.status, len(rank)), f.id))
    rows = []
    for f in ordered:
        label = _e(f.label)
        if f.suggested_label is not None:
            label += f' <span class="arrow">→</span> {_e(f.suggested_label)}'
        rows.append([str(int(f.id)), str(int(f.example_id)), _badge(f.status), _e(f.kind), _e(f.source), label,
                     _e(f.reviewer_label), _e(f.who), _e(f.note), _e(f.text),
                     _e(f.updated_at.strftime("%Y-%m-%d %H:%M"))])
    columns, rows = _drop_empty(["flag", "example", "status", "kind", "source", "label → suggested", "reviewer label",
                                 "who", "note", "text", "updated (UTC)"], rows, REVIEW_COLUMNS)
    table = _table(columns, rows, {"flag": "num", "example": "num", "note": "note", "text": "text",
                                   "updated (UTC)": "when"}, css_class="flags")
    return (f"<section><h2>Flagged examples ({len(flags)})</h2>{table}"
            f'<p class="muted">Review with <code>datablame flags {_e(summary.workdir)} accept|reject|relabel ID'
            f"</code>; <code>datablame export</code> applies the decisions.</p></section>")


def _drop_empty(columns: Sequence[str], rows: Sequence[Sequence[str]],
                optional: Collection[str]) -> tuple[list[str], list[list[str]]]:
    """The table without those of the ``optional`` columns that are empty in every row."""
    keep = [i for i, column in enumerate(columns) if column not in optional or any(row[i] for row in rows)]
    return [columns[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _plots_section(plots: Sequence[Plot]) -> str:
    if not plots:
        return ""
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.png).decode("ascii")}" alt="{_e(p.caption)}">'
        f"<figcaption>{_e(p.caption)} <code>plots/{_e(p.name)}</code></figcaption></figure>" for p in plots)
    return f"<section><h2>Plots</h2>{figures}</section>"


def _demo_section(demo: Mapping[str, Any] | None) -> str:
    if not demo:
        return ""
    flat = {f"{k} · {sub}" if isinstance(v, dict) else k: w
            for k, v in demo.items() for sub, w in (v.items() if isinstance(v, dict) else [(None, v)])}
    return f"<section><h2>Demo: found vs injected</h2>{_kv(flat)}</section>"


def _details_section(summary: Summary) -> str:
    parts = ["<section><h2>Details</h2>"]
    if summary.runs:
        rows = [[_e(r["method"]), _e(_fmt(r["created_at"])), f"<code>{_e(_fmt(r['parameters']))}</code>"]
                for r in summary.runs]
        parts.append("<h3>Scan runs</h3>" + _table(["method", "when", "parameters"], rows))
    if summary.indexes:
        rows = [[_e(m.get("method")), _e(m.get("scoring")), _e(m.get("kind")), _e(m.get("n")), _e(m.get("dim")),
                 _e(_fmt(m.get("recall_at_10")) or "exact")] for m in summary.indexes]
        parts.append("<h3>Indexes</h3>" + _table(["method", "scoring", "kind", "n", "dim", "recall@10"], rows,
                                                   dict.fromkeys(["n", "dim", "recall@10"], "num"),
                                                   css_class="compact"))
    if summary.checkpoints:
        rows = [[_e(c["step"]), _e(_fmt(c["learning_rate"])), f"<code>{_e(c['path'])}</code>"]
                for c in summary.checkpoints]
        parts.append("<h3>Checkpoints</h3>" + _table(["step", "learning rate", "path"], rows,
                                                       dict.fromkeys(["step", "learning rate"], "num"),
                                                       css_class="compact"))
    model = {"data": summary.data_path, "base model": summary.base_model, "labels": ", ".join(summary.label_names),
             "max length": summary.max_length}
    parts.append('<div class="grid"><div><h3>Data and model</h3>' + _kv(model) + "</div>")
    if summary.training:
        parts.append("<div><h3>Training</h3>" + _kv(summary.training) + "</div>")
    return "".join(parts) + "</div></section>"


def render_html(summary: Summary, flags: Sequence, plots: Sequence[Plot], demo: Mapping[str, Any] | None) -> str:
    """The whole page as one string: no external resources, every user-provided value escaped.

    flags: :class:`datablame.store.flags.FlagView`-like objects (id, example_id, text, label, kind, source,
    suggested_label, status, reviewer_label, note, who, updated_at).
    """
    title = f"datablame report: {summary.workdir}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{STYLE}</style></head>
<body><main>
<h1>datablame report</h1>
<p class="sub">workdir <code>{_e(summary.workdir)}</code> · data <code>{_e(summary.data_path)}</code>
· generated {_e(summary.generated_at)}</p>
{_summary_section(summary, flags)}
{_flags_section(summary, flags)}
{_demo_section(demo)}
{_plots_section(plots)}
{_details_section(summary)}
<footer>Written by <code>datablame report</code>; self-contained (no external resources).</footer>
</main></body></html>
"""


# ----------------------------------------------------------------------------------------------- writing


def write_report(workdir: Path, db_url: str | None = None, out: Path | None = None) -> Path:
    """Write the workdir's report (default ``WORKDIR/report.html``) atomically; return its path."""
    from datablame.influence.atomic import atomic_write_bytes
    from datablame.influence.workdir import Workdir

    target = Path(out) if out is not None else Workdir(workdir).report_path
    atomic_write_bytes(target, render_html(*gather(Path(workdir), db_url)).encode("utf-8"))
    return target


@report_errors
def report(
    workdir: Path = WORKDIR,
    out: Optional[Path] = OUT,
    db: Optional[str] = DB,
    quiet: bool = QUIET, verbose: bool = VERBOSE,  # quiet: no message to silence; the path on stdout is the result
) -> None:
    """Write one self-contained HTML page: summary, flagged examples with their status, plots; print its path."""
    log_verbosely(verbose)
    print(write_report(workdir, db, out))


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``datablame`` app."""
    app.command()(report)
