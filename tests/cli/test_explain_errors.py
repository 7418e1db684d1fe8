"""'datablame explain' (and the choices of 'index' and 'vectors') on bad input, through the real console script:
one line 'error: PROBLEM (FIX)' on stderr and exit status 2, refused before anything loads; over-long inputs
are truncated with a one-line warning."""

import json
import shutil

import pytest
from test_cli import datablame

from datablame.influence.registry import method_names

TRACIN = ("--method", "tracin", "--json", "--no-plot", "--top", "3")
MAX_LENGTH = 8  # tokens, [CLS] and [SEP] included
LONG = "goal team the very match score coach league win player a was really today and my new great pasta soup"


def one_error_line(r) -> str:
    """The single line on stderr of a run that failed with status 2."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert lines[0].endswith(")") and " (" in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def indexed(trained_workdir, tmp_path_factory):
    """A copy of the trained workdir with a TracIn cosine index and its config's max_length cut to 8 tokens."""
    from datablame.index.explain import index_workdir
    from datablame.influence.build import MethodSettings

    wd = tmp_path_factory.mktemp("explain-errors") / "wd"
    shutil.copytree(trained_workdir, wd, ignore=shutil.ignore_patterns("index", "vectors", "cache", "plots"))
    index_workdir(wd, "tracin", MethodSettings(params=["last-layer"], dim=32, device="cpu"), ("cosine",))
    config = json.loads((wd / "config.json").read_text())
    config["max_length"] = MAX_LENGTH
    (wd / "config.json").write_text(json.dumps(config))
    return wd


def test_queries_file_not_utf8(trained_workdir, tmp_path):
    queries = tmp_path / "latin1.txt"
    queries.write_bytes("goal team\nsoupe épicée\n".encode("latin-1"))
    line = one_error_line(datablame("explain", trained_workdir, "--queries", queries, "--method", "tracin"))
    assert f"queries file {queries} is not UTF-8: line 2 has the byte 0xe9" in line
    assert "(save it as UTF-8, e.g. iconv" in line


def test_queries_file_with_bom(indexed, tmp_path):
    queries = tmp_path / "bom.txt"
    queries.write_text("goal team the very\nsoup bread and my\n", encoding="utf-8-sig")
    r = datablame("explain", indexed, "--queries", queries, *TRACIN)
    assert r.returncode == 0, r.stderr
    assert [o["text"] for o in json.loads(r.stdout)] == ["goal team the very", "soup bread and my"]


@pytest.mark.parametrize("top", ["0", "-1"])
def test_top_below_one_refused_first(tmp_path, top):
    line = one_error_line(datablame("explain", tmp_path, "goal team", "--top", top))  # tmp_path: no workdir
    assert line == f"error: --top must be at least 1, not {top} (e.g. --top 10)"


def test_not_a_workdir(tmp_path):
    line = one_error_line(datablame("explain", tmp_path, "goal team", "--method", "tracin"))
    assert f"error: {tmp_path} is not a datablame workdir (no config.json) (create one with" in line


@pytest.mark.parametrize("args, message", [
    (["explain", "goal team", "--method", "foo"],
     f"unknown method 'foo' (give --method one of {', '.join(method_names())})"),
    (["explain", "goal team", "--curvature", "newton"], "unknown curvature 'newton' (give --curvature one of auto, lissa, "),
    (["index", "--method", "foo"], f"unknown method 'foo' (give --method one of all, {', '.join(method_names())})"),
    (["index", "--score", "dot"], "unknown scoring 'dot' (give --score one of all, cosine, raw)"),
    (["index", "--projection", "sparse"], "unknown projection 'sparse' (give --projection one of countsketch, "),
    (["vectors", "--dtype", "float8"], "unknown dtype 'float8' (give --dtype one of float32, float16)"),
    (["index", "--at", "minimum"], "unknown linearization point 'minimum' (give --at one of auto, checkpoint, optimum)"),
])
def test_unknown_choice_refused_first(tmp_path, args, message):
    command, *rest = args
    line = one_error_line(datablame(command, tmp_path, *rest))  # tmp_path: no workdir, so nothing was loaded
    assert line.startswith(f"error: {message}"), line


def test_long_query_truncated_with_warning(indexed, tmp_path):
    tokens = len(LONG.split()) + 2
    r = datablame("explain", indexed, LONG, *TRACIN)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        f"warning: the input has {tokens} tokens, more than the workdir's max_length: truncated to {MAX_LENGTH} "
        f"tokens ({tokens - MAX_LENGTH} dropped)"]

    queries = tmp_path / "queries.txt"
    prefix = " ".join(LONG.split()[:MAX_LENGTH - 2])
    queries.write_text(f"{LONG}\n{prefix}\n")
    r = datablame("explain", indexed, "--queries", queries, *TRACIN, "-q")
    assert r.returncode == 0, r.stderr
    assert f"warning: 1 of 2 inputs (#1) are longer than the workdir's max_length: truncated to {MAX_LENGTH} " \
           f"tokens (up to {tokens - MAX_LENGTH} dropped)" in r.stderr
    long, short = json.loads(r.stdout)
    assert long["prediction"]["label"] == short["prediction"]["label"]  # the model saw only the first 6 words
    assert long["prediction"]["probability"] == pytest.approx(short["prediction"]["probability"])
    assert [n["id"] for n in long["supporting"]] == [n["id"] for n in short["supporting"]]
