"""The real console script in a subprocess: train, init, and one-line errors with exit status 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}


def datablame(*args, cwd=None):
    exe = os.path.join(os.path.dirname(sys.executable), "datablame")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "datablame.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def test_train_then_init(tiny_bert, tiny_csv, tmp_path):
    wd = tmp_path / "wd"
    r = datablame("train", tiny_csv, "--model", tiny_bert, "--out", wd, "--epochs", "1", "--batch-size", "16",
                  "--checkpoints", "2", "--lr", "1e-3", "--freeze-encoder", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(wd)
    cfg = json.loads((wd / "config.json").read_text())
    assert len(cfg["checkpoints"]) == 2 and cfg["training"]["freeze_encoder"] is True
    r = datablame("init", tmp_path / "wd2", "--data", tiny_csv, "--checkpoint", wd / "checkpoints" / "ck-001",
                  "--lr", "0.001")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "wd2" / "config.json").read_text())["checkpoints"][0]["learning_rate"] == 0.001
    r = datablame("vectors", wd, "--params", "last-layer", "--dim", "16", "--dtype", "float16", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for method, dim in [("tracin", 32), ("influence", 16), ("representer", 3 * 33)]:
        v = np.load(wd / "vectors" / method / "shard-00000.npy")
        assert v.shape == (48, dim) and v.dtype == np.float16
        assert np.isfinite(np.load(wd / "vectors" / method / "self_influence.npy")).all()
    # trained with --freeze-encoder: by default only the head's 3 × 33 parameters, exact, per checkpoint; in the
    # softmax basis that is 2 × 33 dimensions
    r = datablame("vectors", wd, "--method", "tracin", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert np.load(wd / "vectors" / "tracin" / "shard-00000.npy").shape == (48, 2 * 66)


@pytest.mark.parametrize("args, message", [
    (["train", "{data}", "--model", "{tmp}/missing-model", "--out", "{tmp}/o"], "model folder"),
    (["train", "{data}", "--model", "{model}", "--out", "{tmp}/o", "--label-column", "y"], "column 'y' not in"),
    (["train", "{tmp}/none.csv", "--model", "{model}", "--out", "{tmp}/o"], "not found"),
    (["init", "{tmp}/o", "--data", "{data}", "--checkpoint", "{tmp}/nowhere"], "checkpoint folder"),
])
def test_user_errors_are_one_line(tiny_bert, tiny_csv, tmp_path, args, message):
    args = [a.format(data=tiny_csv, tmp=tmp_path, model=tiny_bert) for a in args]
    r = datablame(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "o" / "config.json").exists()
