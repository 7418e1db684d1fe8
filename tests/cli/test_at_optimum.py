"""``index --at optimum`` through the console script: the optimum head is stored beside the vectors, and a separate
``explain`` process ranks the training examples exactly as the library's scores at that optimum do. ``--at auto``
(the default): the raw index reads vectors at the optimum and the cosine index vectors at the checkpoint, in one
process or as ``--shard`` jobs and ``finalize``."""

import json
import shutil

import numpy as np
import torch
from test_cli import datablame

from datablame.influence.build import MethodSettings, build_method
from datablame.influence.methods import compute_train_vectors, scores

TEXT = "goal team the very"


def test_index_at_optimum_then_explain(frozen_workdir, tmp_path):
    wd = shutil.copytree(frozen_workdir, tmp_path / "wd")
    r = datablame("index", wd, "--method", "influence", "--at", "optimum", "--score", "raw", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert (wd / "vectors" / "influence-optimum" / "final-optimum_head.npy").is_file()
    r = datablame("explain", wd, TEXT, "--method", "influence", "--score", "raw", "--top", "5", "--json",
                  "--no-plot", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert_ranked_as_library(json.loads(r.stdout), wd, "optimum", "raw")


def assert_ranked_as_library(shown: dict, wd, at: str, scoring: str) -> None:
    """The supporters ``explain --json`` showed are the library's top scores of influence at ``at``."""
    built = build_method(wd, "influence", MethodSettings.faithful(at=at, device="cpu"))
    v = torch.as_tensor(compute_train_vectors(built.method, built.train))
    built.method.finalize(v)
    s, _ = scores(built.method, v, [TEXT])
    s = s[0].numpy()
    if scoring == "cosine":
        u = built.method.query_vectors([TEXT]).vectors[0].numpy()
        s = s / (np.linalg.norm(v.numpy(), axis=1) * np.linalg.norm(u))
    top = np.argsort(-s, kind="stable")[:5]
    assert [e["id"] for e in shown["supporting"]] == top.tolist()
    assert np.allclose([e["score"] for e in shown["supporting"]], s[top], rtol=1e-4)


def metas(wd) -> dict:
    """{scoring: the point its influence index's vectors were taken at}."""
    return {s: json.loads((wd / "index" / f"influence-{s}.json").read_text())["settings"]["at"]
            for s in ("cosine", "raw")}


def test_auto_takes_raw_at_the_optimum_and_cosine_at_the_checkpoint(frozen_workdir, tmp_path):
    wd = shutil.copytree(frozen_workdir, tmp_path / "wd")
    r = datablame("index", wd, "--method", "influence", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert metas(wd) == {"cosine": "checkpoint", "raw": "optimum"}
    for scoring, at in metas(wd).items():
        r = datablame("explain", wd, TEXT, "--method", "influence", "--score", scoring, "--top", "5", "--json",
                      "--no-plot", "--device", "cpu")
        assert r.returncode == 0, r.stderr
        assert_ranked_as_library(json.loads(r.stdout), wd, at, scoring)
    r = datablame("explain", wd, TEXT, "--top", "3", "--no-plot", "--device", "cpu")  # both tables, each its own
    assert r.returncode == 0, r.stderr
    assert "similar effect" in r.stdout and "counterfactual" in r.stdout
    # --at optimum then takes both scorings there; the checkpoint's vectors serve no index any more
    r = datablame("index", wd, "--method", "influence", "--at", "optimum", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert metas(wd) == {"cosine": "optimum", "raw": "optimum"}
    assert json.loads((wd / "vectors" / "influence" / "manifest.json").read_text())["scorings"] == []


def test_auto_in_shard_jobs_then_finalize(frozen_workdir, tmp_path):
    wd = shutil.copytree(frozen_workdir, tmp_path / "wd")
    for i in range(2):
        r = datablame("index", wd, "--method", "influence", "--shard", f"{i}/2", "--shard-size", "16", "--device",
                      "cpu", "-q")
        assert r.returncode == 0, r.stderr
    assert not (wd / "index" / "influence-raw.json").exists()
    r = datablame("finalize", wd, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "influence (raw)" in r.stderr and "influence (cosine)" in r.stderr
    assert metas(wd) == {"cosine": "checkpoint", "raw": "optimum"}
