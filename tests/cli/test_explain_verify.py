"""explain --verify through the console script: the documented JSON shape, both scorings' checks in the table,
a one-line refusal for a batch, and for a workdir whose whole model was fine-tuned: the estimate and --yes."""

import json
import shutil

from test_cli import datablame

from datablame.index.explain import index_workdir
from datablame.influence.build import MethodSettings

TEXT = "goal team the very"


def test_explain_verify_cli(frozen_workdir, trained_workdir, tmp_path):
    r = datablame("explain", frozen_workdir, TEXT, "--method", "tracin", "--score", "cosine", "--verify", "--remove", "2",
                  "--draws", "2", "--json", "--no-plot", "-q")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verification"]
    assert set(v) >= {"k", "margin", "probability", "flipped", "holds", "seconds"} and v["k"] == 2
    r = datablame("explain", frozen_workdir, TEXT, "--method", "tracin", "--verify", "--remove", "2", "--draws", "2",
                  "--no-plot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("verified by retraining") == 2 and "the explanation" in r.stdout  # both scorings
    queries = tmp_path / "q.txt"
    queries.write_text(TEXT + "\n")
    r = datablame("explain", frozen_workdir, "--queries", queries, "--method", "tracin", "--verify")
    assert r.returncode == 2 and "--verify checks one input, or a slice as a whole" in r.stderr
    queries.write_text(TEXT + "\nsoup bread and my\nmatch score coach\n")
    r = datablame("explain", frozen_workdir, "--queries", queries, "--aggregate", "--method", "tracin", "--verify",
                  "--remove", "2", "--draws", "2", "--json", "--no-plot", "-q")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verification"]
    assert v["inputs"] == 3 and 0 <= v["flipped_share"] <= 1 and len(v["margin"]["without_random"]) == 2
    wd = tmp_path / "whole"  # trained without --freeze-encoder: retraining would be a whole fine-tune
    shutil.copytree(trained_workdir, wd, ignore=shutil.ignore_patterns("index", "vectors", "cache", "plots"))
    index_workdir(wd, "tracin", MethodSettings(params=["last-layer"], dim=32, device="cpu"), ("cosine",))
    r = datablame("explain", wd, TEXT, "--method", "tracin", "--verify", "--no-plot")
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("verifying")]
    assert r.returncode == 2 and "fine-tunes the whole model 7 times" in lines[-1] and "--yes" in lines[-1], r.stderr
    r = datablame("explain", wd, TEXT, "--method", "tracin", "--verify", "--remove", "2", "--draws", "1", "--yes",
                  "--json", "--no-plot", "-q")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verification"]
    assert v["retrained"] == "whole model" and v["estimated_seconds"] > 0 and len(v["margin"]["without_random"]) == 1
    assert v["margin"]["original"] != v["margin"]["without_top"]  # the fine-tunes did train, without those two


def test_explain_stability_cli(frozen_workdir, tmp_path):
    r = datablame("explain", frozen_workdir, TEXT, "--method", "tracin", "--score", "raw", "--stability", "--top", "3",
                  "--json", "--no-plot", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["stability"]
    assert s["k"] == 3 and s["other_scoring"] == "cosine" and len(s["examples"]) == 3
    r = datablame("explain", frozen_workdir, TEXT, "--method", "tracin", "--stability", "--top", "3", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("stability of the top 3 supporters") == 2
    queries = tmp_path / "q.txt"
    queries.write_text(TEXT + "\n")
    r = datablame("explain", frozen_workdir, "--queries", queries, "--method", "tracin", "--stability")
    assert r.returncode == 2 and "--stability checks one input at a time" in r.stderr
