"""``datablame report``: a self-contained HTML page (escaped, images embedded), written with or without a scan, and
rendered by headless Chromium into a screenshot that shows the page and its embedded plot."""

import base64
import datetime as dt
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import typer
from datablame.cli import report
from datablame.cli.main import app as main_app
from datablame.store.plots import suspicion_histogram
from datablame.store.flags import FlagView
from typer.testing import CliRunner

SCRIPT = "<script>alert('x')</script>"
TAB10_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # the first class's colour in suspicion_histogram


def report_app() -> typer.Typer:
    """An app with ``report`` as a subcommand (the way cli/main.py registers it)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    report.register(app)
    return app


def invoke(app, *args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE), "external resource"
    assert "<link" not in page and "<script" not in page and "@import" not in page and "url(" not in page


@pytest.fixture(scope="module")
def scanned(trained_workdir, tmp_path_factory):
    """A copy of the tiny workdir, scanned (3 open flags), one flag accepted, one user flag with an HTML-ish note,
    a histogram in plots/, an index's meta and a demo.json; then the report written by the command."""
    wd = shutil.copytree(trained_workdir, tmp_path_factory.mktemp("report") / "wd")
    invoke(main_app, "scan", wd, "--folds", "3", "--repeats", "1", "-q")
    invoke(main_app, "flags", wd, "accept", "1")
    invoke(main_app, "flags", wd, "add", "7", "--kind", "biased", "--note", "<b>note</b> & more")
    rng = np.random.default_rng(0)
    suspicion_histogram(rng.normal(size=48), ["sports", "food", "tech"] * 16, 1.0, wd / "plots" / "test-hist.png")
    (wd / "demo.json").write_text(json.dumps({"precision": 0.75, "recall": 0.6, "injected": 5, "flagged": 4,
                                              "timings": {"scan_s": 1.25}}))
    (wd / "index").mkdir(exist_ok=True)
    (wd / "index" / "tracin-cosine.json").write_text(json.dumps(
        {"method": "tracin", "scoring": "cosine", "kind": "hnsw", "n": 48, "dim": 256, "key": {},
         "recall_at_10": 0.975}))
    path = invoke(report_app(), "report", wd).strip()
    assert path == str(wd / "report.html")
    return wd, (wd / "report.html").read_text()


def test_report_after_scan(scanned):
    wd, page = scanned
    flags = json.loads(invoke(main_app, "flags", wd, "list", "--json"))
    assert len(flags) == 4
    for f in flags:
        assert f["text"] in page  # the tiny data's texts need no escaping
    assert page.count('class="badge b-open"') >= 3 and 'class="badge b-accepted"' in page
    assert "&lt;b&gt;note&lt;/b&gt; &amp; more" in page and "<b>note" not in page
    # open flags first, then by id: the accepted flag 1 comes after the open ones
    order = [int(i) for i in re.findall(r'<tr><td class="num">(\d+)</td><td class="num">\d+</td>', page)]
    assert order == [2, 3, 4, 1]
    assert page.count("data:image/png;base64,") == len(list((wd / "plots").glob("*.png")))
    embedded = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*alt="test: hist"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == (wd / "plots" / "test-hist.png").read_bytes()
    assert "Demo: found vs injected" in page and "precision" in page and "timings · scan_s" in page
    assert "Scan runs" in page and ">cv<" in page and "sports 16" in page
    assert "<td>tracin</td><td>cosine</td><td>hnsw</td>" in page and ">0.975<" in page
    assert_self_contained(page)
    assert not list(wd.glob(".report.html.*"))  # the temporary file is gone


def test_render_html_escapes_everything():
    now = dt.datetime(2024, 1, 2, 3, 4)
    flag = FlagView(1, 0, f"bad {SCRIPT} text", '<i>', "mislabeled", "scan", '"quoted"', "open", None,
                    SCRIPT, "<eve>", now, 1)
    summary = report.Summary(workdir=f"/tmp/{SCRIPT}", data_path="a&b.csv", label_names=["<i>", '"quoted"'],
                             label_counts={"<i>": 1, '"quoted"': 0}, training={"<k>": "<v>"}, scanned=True,
                             runs=[{"method": "<m>", "parameters": {"x": "<y>"}, "created_at": now}],
                             indexes=[{"method": "<m>", "scoring": "cosine", "kind": "exact", "n": 1, "dim": 2}])
    plots = [report.Plot('x"><script>.png', b"\x89PNG fake")]
    page = report.render_html(summary, [flag], plots, {"<d>": "<v>"})
    assert "<script" not in page and "<i>" not in page and "<eve>" not in page and "<m>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "&quot;quoted&quot;" in page
    assert "a&amp;b.csv" in page and "&lt;d&gt;" in page and "&lt;eve&gt;" in page
    assert f'data:image/png;base64,{base64.b64encode(plots[0].png).decode()}"' in page
    assert_self_contained(page)


def flags_table(page: str) -> tuple[list[str], list[str]]:
    """The flags table's header texts and the CSS classes of its first row's cells."""
    table = re.search(r'<table class="flags">(.*?)</table>', page).group(1)
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    row = re.search(r"<tbody><tr>(.*?)</tr>", table).group(1)
    return header, [m or "" for m in re.findall(r'<td(?: class="([^"]*)")?>', row)]


def test_flags_text_takes_the_width_left():
    now = dt.datetime(2024, 1, 2, 3, 4)
    scanned = [FlagView(i, i, "a long text " * 20, "food", "mislabeled", "scan", "tech", "open", None, "", "", now,
                        1) for i in (1, 2)]
    summary = report.Summary(workdir="wd", label_names=["food", "tech"], scanned=True)
    page = report.render_html(summary, scanned, [], None)
    header, classes = flags_table(page)
    # no reviewer yet: the reviewer's columns (reviewer label, who, note) are left out
    assert header == ["flag", "example", "status", "kind", "source", "label → suggested", "text", "updated (UTC)"]
    assert classes[header.index("text")] == "text"
    # every other column keeps to its content (width 1%, no wrapping); the text (and note) columns take the rest
    assert "table.flags th,table.flags td{width:1%;white-space:nowrap}" in page
    assert re.search(r"table\.flags \.text,table\.flags \.note\{width:auto;\s*white-space:normal\}", page)
    assert "max-width:480px" not in page
    reviewed = [scanned[0], FlagView(2, 2, "text", "food", "mislabeled", "scan", "tech", "relabeled", "tech", "",
                                     "ann", now, 2)]
    header, _ = flags_table(report.render_html(summary, reviewed, [], None))
    assert "reviewer label" in header and "who" in header and "note" not in header  # shown once someone has one


def test_report_without_scan(trained_workdir, tmp_path):
    out = report.write_report(trained_workdir, out=tmp_path / "r" / "page.html")
    page = out.read_text()
    assert out == tmp_path / "r" / "page.html"
    assert "No scan yet: run <code>datablame scan" in page and "sports 16" in page and "Checkpoints" in page
    assert not (trained_workdir / "datablame.db").exists()  # reporting creates no store
    assert_self_contained(page)
    # an explicit, empty store: still a page saying there is no scan
    page = report.write_report(trained_workdir, f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "p.html").read_text()
    assert "No scan yet" in page


def test_report_command_errors(tmp_path):
    r = CliRunner().invoke(report_app(), ["report", str(tmp_path)])
    assert r.exit_code == 2 and "not a datablame workdir" in r.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install "
                    "chromium) — the screenshot check of the report is skipped")
def test_report_renders_in_chromium(scanned, tmp_path):
    from matplotlib.image import imread

    wd, _ = scanned
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", f"--screenshot={shot}",
                    (wd / "report.html").resolve().as_uri()], capture_output=True, timeout=60, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    image = imread(shot)[..., :3]
    assert image.shape[:2] == (2000, 1280)
    not_white = (image < 0.95).any(axis=-1).mean()
    assert not_white > 0.05, f"blank page? {not_white:.1%} non-white pixels"
    # the embedded histogram rendered: its bars (tab10 blue at alpha 0.75 on white) are on screen
    bar = 0.75 * TAB10_BLUE + 0.25
    assert (np.abs(image - bar).max(axis=-1) < 0.04).sum() > 500
    # and so did the badges: the accepted badge's green
    assert (np.abs(image - np.array([0x15, 0x80, 0x3D]) / 255).max(axis=-1) < 0.04).sum() > 50
