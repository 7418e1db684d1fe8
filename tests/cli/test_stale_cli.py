"""From the user's side: a Trainer run again into the same folder (new weights at the same paths) never lets
`explain` answer from the old model: refused in one line until recorded again, then the old index is stale."""

import json
import shutil

from test_cli import datablame


def one_line_error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_trainer_rerun_into_the_same_folder(trained_workdir, tiny_csv, tmp_path):
    run = tmp_path / "trainer-out"
    for step, ck in ((10, "ck-001"), (20, "ck-002")):
        shutil.copytree(trained_workdir / "checkpoints" / ck, run / f"checkpoint-{step}")
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 10, "learning_rate": 1e-3},
                                                                        {"step": 20, "learning_rate": 5e-4}]}))
    wd = tmp_path / "wd"
    assert datablame("init", wd, "--data", tiny_csv, "--checkpoint", run).returncode == 0
    r = datablame("index", wd, "--method", "tracin", "--params", "head", "--score", "raw", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    shutil.copy(trained_workdir / "checkpoints" / "ck-000" / "model.safetensors", run / "checkpoint-20")
    line = one_line_error(datablame("explain", wd, "goal team", "--method", "tracin", "--score", "raw"))
    assert "checkpoint-20 changed since the workdir recorded them" in line and "datablame init" in line
    assert datablame("init", wd, "--data", tiny_csv, "--checkpoint", run).returncode == 0
    line = one_line_error(datablame("explain", wd, "goal team", "--method", "tracin", "--score", "raw"))
    assert "tracin index is stale (checkpoints changed" in line and "datablame index WORKDIR --method tracin" in line
