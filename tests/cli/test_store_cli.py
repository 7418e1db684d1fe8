"""The real console script in a subprocess: scan, review flags, export; one-line errors with exit status 2."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from test_cli import datablame


@pytest.fixture
def workdir(trained_workdir, tmp_path):
    """A copy of the trained tiny workdir (the scan writes vectors and the store into it)."""
    return shutil.copytree(trained_workdir, tmp_path / "wd")


def run_ok(*args):
    r = datablame(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_scan_review_export(workdir, tmp_path):
    out = json.loads(run_ok("scan", workdir, "--json", "--flag-top", "0.1", "--device", "cpu", "-q"))
    assert out["method"] == "cv" and len(out["examples"]) == 48
    first = out["examples"][0]
    assert set(first) == {"id", "text", "label", "score", "suggested_label"}
    assert first["suggested_label"] != first["label"]
    scores = [e["score"] for e in out["examples"]]
    assert scores == sorted(scores, reverse=True) and sorted(e["id"] for e in out["examples"]) == list(range(48))
    assert (Path(workdir) / "plots" / "scan-cv.png").stat().st_size > 10_000  # the histogram per class
    assert (workdir / "datablame.db").is_file()
    flags = json.loads(run_ok("flags", workdir, "list", "--json"))
    assert [f["example_id"] for f in flags] == [e["id"] for e in out["examples"][:5]]  # ceil(10% of 48)
    assert all(f["status"] == "open" and f["kind"] == "mislabeled" for f in flags)
    run_ok("flags", workdir, "accept", "1", "2")
    run_ok("flags", workdir, "reject", "3")
    run_ok("flags", workdir, "relabel", "4", "--label", "food", "--who", "ann")
    assert run_ok("flags", workdir, "add", "20", "--kind", "biased", "--note", "stereotype").strip() == "6"
    statuses = {f["id"]: f["status"] for f in json.loads(run_ok("flags", workdir, "list", "--json"))}
    assert statuses == {1: "accepted", 2: "accepted", 3: "rejected", 4: "relabeled", 5: "open", 6: "open"}
    assert [f["id"] for f in json.loads(run_ok("flags", workdir, "list", "--kind", "biased", "--json"))] == [6]
    run_ok("export", workdir, "--out", tmp_path / "clean.csv", "--drop")
    with open(tmp_path / "clean.changes.csv", newline="") as fh:
        changes = list(csv.DictReader(fh))
    dropped = {int(c["id"]) for c in changes if not c["new_label"]}
    assert dropped == {flags[0]["example_id"], flags[1]["example_id"]}
    with open(tmp_path / "clean.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 46
    # the review log: undo reverts the reviewer's latest action, history shows who did what
    assert "undone: flag 4" in datablame("flags", workdir, "undo", "--who", "ann").stderr  # messages go to stderr
    events = json.loads(run_ok("flags", workdir, "history", "4", "--json"))
    assert [(e["action"], e["who"], e["before"]["status"], e["after"]["status"]) for e in events] == [
        ("undo", "ann", "relabeled", "open"), ("relabel", "ann", "open", "relabeled")]
    r = datablame("flags", workdir, "undo", "--who", "ann")
    assert r.returncode == 2 and "ann has no review action left to undo" in r.stderr
    run_ok("flags", workdir, "relabel", "4", "--label", "food", "--who", "ann")
    assert "relabel" in run_ok("flags", workdir, "history")
    # re-running the scan replaces its rows: reviewed flags stay, nothing is duplicated
    run_ok("scan", workdir, "--flag-top", "0.1", "--device", "cpu", "-q")
    again = json.loads(run_ok("flags", workdir, "list", "--json"))
    assert len(again) == len({(f["example_id"], f["kind"]) for f in again})
    assert {f["id"]: f["status"] for f in again if f["id"] <= 4} == {1: "accepted", 2: "accepted", 3: "rejected",
                                                                     4: "relabeled"}


def test_scan_method_and_db_url(workdir, tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    out = json.loads(run_ok("scan", workdir, "--method", "combined", "--json", "--db", url, "--device", "cpu", "-q"))
    assert out["method"] == "combined" and (tmp_path / "elsewhere.db").is_file()
    assert (workdir / "vectors" / "tracin" / "self_influence.npy").is_file()  # computed when missing
    assert not (workdir / "datablame.db").exists()
    assert len(json.loads(run_ok("flags", workdir, "list", "--json", "--db", url))) == 3  # ceil(5% of 48)
    for args, message in [(["accept", "1", "77"], "unknown flag id 77"),
                          (["relabel", "1", "--label", "weather"], "unknown label 'weather'")]:
        r = datablame("flags", workdir, *args, "--db", url)
        assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and message in r.stderr, r.stderr
    assert {f["status"] for f in json.loads(run_ok("flags", workdir, "list", "--json", "--db", url))} == {"open"}


@pytest.mark.parametrize("args, message", [
    (["flags", "{wd}", "accept", "1"], "no scan or flag in the store yet"),
    (["flags", "{tmp}/nowhere", "list"], "not a datablame workdir"),
    (["scan", "{wd}", "--method", "magic"], "unknown scan method 'magic'"),
    (["flags", "{wd}", "add", "999", "--kind", "biased"], "unknown example id 999"),
    (["flags", "{wd}", "add", "1", "--kind", "rude"], "unknown kind 'rude'"),
    (["export", "{wd}", "--out", "{tmp}/x.txt", "--db", "nope://"], "database URL"),
])
def test_user_errors_are_one_line(workdir, tmp_path, args, message):
    r = datablame(*[a.format(wd=workdir, tmp=tmp_path) for a in args])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_scan_verify_on_a_dev_file(frozen_workdir, tmp_path):
    from conftest import make_rows, write_csv

    wd = shutil.copytree(frozen_workdir, tmp_path / "wd")
    r = datablame("scan", wd, "--verify")
    assert r.returncode == 2 and "give --dev FILE" in r.stderr and not (wd / "datablame.db").exists()
    dev = write_csv(tmp_path / "dev.csv", make_rows(30, seed=7))
    out = json.loads(run_ok("scan", wd, "--verify", "--dev", dev, "--flag-top", "0.1", "--json", "--device", "cpu"))
    check = out["verification"]
    assert check["flagged"] == 5 and check["dev_examples"] == 30 and 0 <= check["accuracy"]["relabeled"] <= 1


def test_scan_verify_lines(capsys):
    from datablame.cli.store_commands import _print_scan_check
    from datablame.store.scan_verify import ScanVerification

    values = {"original": 0.8, "relabeled": 0.9, "removed": 0.85, "removed_random": [0.79, 0.81]}
    _print_scan_check(ScanVerification(5, "dev.csv", 30, values, dict(values), 1.0))
    printed = " ".join(capsys.readouterr().err.split())
    assert "5 flagged relabeled 0.9000 (+0.1000), removed 0.8500 (+0.0500)" in printed
    assert "as many random removed 0.8000 ± 0.0100" in printed
