"""`datablame export` from the user's side: the data's folder, the workdir and its files are refused in one line
(exit 2, nothing touched); --force writes onto the training data; a latin-1 data file needs --encoding."""

import shutil

import pytest
from test_cli import datablame


@pytest.fixture
def workdir(trained_workdir, tiny_csv, tmp_path):
    """A copy of the trained tiny workdir, its data copied into a folder of its own, the dataset in the store."""
    import json

    data = tmp_path / "data" / "train.csv"
    data.parent.mkdir()
    shutil.copy(tiny_csv, data)
    (data.parent / "README").write_text("the user's notes")
    wd = shutil.copytree(trained_workdir, tmp_path / "wd")
    config = json.loads((wd / "config.json").read_text())
    (wd / "config.json").write_text(json.dumps({**config, "data_path": str(data)}))
    r = datablame("flags", wd, "add", "3", "--kind", "other", "--note", "check")
    assert r.returncode == 0, r.stderr
    return wd, data


def test_export_refuses_what_it_would_destroy(workdir):
    wd, data = workdir
    before = {p: p.read_bytes() for p in [*data.parent.iterdir(), wd / "config.json"]}
    for args, problem in [(["--format", "hf", "--out", data.parent], "training data"),
                          (["--format", "hf", "--out", wd], "is the workdir"),
                          (["--out", data], "training data"),
                          (["--out", wd / "datablame.db", "--format", "csv"], "is the store"),
                          (["--out", wd / "config.json", "--format", "csv", "--force"], "workdir's own files")]:
        r = datablame("export", wd, *args)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and problem in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert set(data.parent.iterdir()) == {data, data.parent / "README"} and (wd / "datablame.db").is_file()
    r = datablame("export", wd, "--out", data, "--force")
    assert r.returncode == 0, r.stderr
    assert data.read_text().startswith("id,text,label")
