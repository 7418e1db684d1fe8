"""'datablame index' and 'datablame explain' through the real console script."""

import json
import shutil

from test_cli import datablame

TRACIN = ("--method", "tracin")


def test_index_then_explain(trained_workdir, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(trained_workdir, wd, ignore=shutil.ignore_patterns("index", "vectors", "cache"))
    r = datablame("index", wd, "--method", "tracin", "--params", "last-layer", "--dim", "32", "--approximate",
                  "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "hnsw index of 48 × 96, recall@10" in r.stderr
    assert {p.name for p in (wd / "index").iterdir()} == {"tracin-cosine.faiss", "tracin-cosine.json",
                                                         "tracin-raw.faiss", "tracin-raw.json"}

    r = datablame("explain", wd, "goal team the very", *TRACIN, "--top", "3", "--json", "--score", "raw")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"method", "text", "prediction", "supporting", "opposing"}
    assert out["method"] == "tracin" and out["scoring"] == "raw" and out["text"] == "goal team the very"
    assert set(out["prediction"]) == {"label", "probability"}
    assert len(out["supporting"]) == 3 and set(out["supporting"][0]) == {"id", "text", "label", "score"}
    assert [s["score"] for s in out["supporting"]] == sorted((s["score"] for s in out["supporting"]), reverse=True)
    assert out["opposing"][0]["score"] <= out["opposing"][-1]["score"]

    queries = tmp_path / "queries.txt"
    queries.write_text("goal team the very\n\nsoup bread and my\n")
    r = datablame("explain", wd, "--queries", queries, *TRACIN, "--json", "--top", "2")
    assert r.returncode == 0, r.stderr
    assert [o["text"] for o in json.loads(r.stdout)] == ["goal team the very", "soup bread and my"]
    for _ in range(2):  # flagging twice adds no duplicate
        r = datablame("explain", wd, "--queries", queries, *TRACIN, "--aggregate", "--json", "--top", "2",
                      "--flag", "biased")
        assert r.returncode == 0, r.stderr
    aggregate = json.loads(r.stdout)
    assert aggregate["text"] == ["goal team the very", "soup bread and my"]
    r = datablame("flags", wd, "list", "--kind", "biased", "--json")
    assert r.returncode == 0, r.stderr
    flags = json.loads(r.stdout)
    assert sorted(f["example_id"] for f in flags) == sorted(s["id"] for s in aggregate["supporting"])
    assert {f["source"] for f in flags} == {"explain"} and {f["status"] for f in flags} == {"open"}

    r = datablame("explain", wd, "goal team the very", *TRACIN, "--top", "2")
    assert r.returncode == 0, r.stderr
    assert "prediction:" in r.stdout and "supporting (tracin, cosine)" in r.stdout and "opposing" in r.stdout
    assert "search" in r.stdout

    for args, message in [
        (["--method", "influence"], "no cosine index for influence"),
        ([*TRACIN, "--score", "dot"], "unknown scoring 'dot'"),
        ([*TRACIN], "stale"),
    ]:
        if message == "stale":
            config = json.loads((wd / "config.json").read_text())
            config["checkpoints"][-1]["learning_rate"] *= 3
            (wd / "config.json").write_text(json.dumps(config))
        r = datablame("explain", wd, "goal team", *args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
