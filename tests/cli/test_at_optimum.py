"""``index --at optimum`` through the console script: the optimum head is stored beside the vectors, and a separate
``explain`` process ranks the training examples exactly as the library's scores at that optimum do."""

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
    assert (wd / "vectors" / "influence" / "final-optimum_head.npy").is_file()
    r = datablame("explain", wd, TEXT, "--method", "influence", "--score", "raw", "--top", "5", "--json",
                  "--no-plot", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    built = build_method(wd, "influence", MethodSettings.faithful(at="optimum", device="cpu"))
    v = torch.as_tensor(compute_train_vectors(built.method, built.train))
    built.method.finalize(v)
    s, _ = scores(built.method, v, [TEXT])
    top = np.argsort(-s[0].numpy(), kind="stable")[:5]
    assert [e["id"] for e in shown["supporting"]] == top.tolist()
    assert np.allclose([e["score"] for e in shown["supporting"]], s[0].numpy()[top], rtol=1e-4)
