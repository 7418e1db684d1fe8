"""Batch explain: streamed in input order (library and CLI), JSON Lines and a streamed JSON list, and plots only
where asked (one chart for a single input, none for a batch unless --plot, which writes one summary chart)."""

import json
import shutil

import pytest
from test_cli import datablame

from datablame.index.explain import Explainer, explain_batches

TRACIN = ("--method", "tracin", "--top", "2")
TEXTS = ["goal team the very", "soup bread and my", "match score coach", "pasta soup great", "league win player"]


@pytest.fixture(scope="module")
def indexed(trained_workdir, tmp_path_factory):
    """A copy of the trained workdir with TracIn indexes (both scorings) over the last layer."""
    from datablame.index.explain import index_workdir
    from datablame.influence.build import MethodSettings

    wd = tmp_path_factory.mktemp("explain-batch") / "wd"
    shutil.copytree(trained_workdir, wd, ignore=shutil.ignore_patterns("index", "vectors", "cache", "plots"))
    index_workdir(wd, "tracin", MethodSettings(params=["last-layer"], dim=32, device="cpu"))
    return wd


@pytest.fixture
def queries(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def test_batches_stream_in_input_order(indexed):
    explainer = Explainer(indexed, "tracin", cache=False)
    raw = explainer.with_scoring("raw")
    calls = []
    queries = explainer.queries
    explainer.queries = lambda texts, progress=None: calls.append(list(texts)) or queries(texts, progress)
    stream = explain_batches([explainer, raw], TEXTS, top=3, batch=2)
    first = next(stream)
    assert calls == [TEXTS[:2]]  # nothing beyond the first batch is computed before it is yielded
    rest = list(stream)
    assert calls == [TEXTS[:2], TEXTS[2:4], TEXTS[4:]]  # query vectors once per batch, shared by both scorings
    results = [first, *rest]
    assert [r[0].text for r in results] == TEXTS and [r[1].text for r in results] == TEXTS
    assert {r[0].scoring for r in results} == {"cosine"} and {r[1].scoring for r in results} == {"raw"}
    whole = Explainer(indexed, "tracin", cache=False).explain(TEXTS, top=3)
    for (streamed, _), one in zip(results, whole):
        assert [n.id for n in streamed.supporting] == [n.id for n in one.supporting]
        assert [n.id for n in streamed.opposing] == [n.id for n in one.opposing]


def test_jsonl_and_streamed_json_list(indexed, queries):
    r = datablame("explain", indexed, "--queries", queries, *TRACIN, "--jsonl", "-q")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [json.loads(line)["text"] for line in lines] == TEXTS
    r = datablame("explain", indexed, "--queries", queries, *TRACIN, "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert [o["text"] for o in json.loads(r.stdout)] == TEXTS
    assert json.loads(r.stdout) == [json.loads(line) | {"timing": o["timing"]}
                                    for line, o in zip(lines, json.loads(r.stdout))]
    r = datablame("explain", indexed, TEXTS[0], *TRACIN, "--jsonl", "--json")
    assert r.returncode == 2 and "give one of them" in r.stderr


def test_plots_only_where_asked(indexed, queries):
    plots = indexed / "plots"
    shutil.rmtree(plots, ignore_errors=True)
    r = datablame("explain", indexed, "--queries", queries, *TRACIN)
    assert r.returncode == 0, r.stderr
    assert not plots.exists() or not list(plots.iterdir())  # a batch: no plot by default
    assert [line for line in r.stdout.splitlines() if line.startswith("prediction:")].__len__() == len(TEXTS)
    r = datablame("explain", indexed, "--queries", queries, *TRACIN, "--plot", "--json")
    assert r.returncode == 0, r.stderr
    summary = [p.name for p in plots.iterdir()]
    assert len(summary) == 1 and summary[0].startswith("explain-tracin-batch-")  # one summary chart
    r = datablame("explain", indexed, TEXTS[0], *TRACIN, "--json")
    assert r.returncode == 0, r.stderr
    assert len(list(plots.iterdir())) == 2  # a single input: its chart by default
    r = datablame("explain", indexed, "--queries", queries, *TRACIN, "--json", "--plot-each", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert len(list(plots.iterdir())) == 1 + len(TEXTS)  # the first input's chart was there already
