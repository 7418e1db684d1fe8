"""``datablame demo``: the whole story on the shipped data, graded against the injected errors (small model)."""

import csv
import json

from typer.testing import CliRunner

from datablame.cli.demo import injected_errors
from datablame.cli.main import app


def test_demo_runs_the_whole_story_and_finds_injected_errors(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text('{"status": "started"}')  # a demo stopped halfway is replaced
    (out / "leftover.txt").write_text("from the stopped demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--encoder", "small", "-q"])
    assert result.exit_code == 0, result.output
    assert not (out / "leftover.txt").exists()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["injected"] == len(injected_errors()) == 28 and summary["flagged"] == 36
    assert summary["precision"] >= 2 * 28 / 351  # at least twice the base rate of errors among 351 messages
    assert set(summary["timings"]) == {"train", "index", "scan", "explain", "review and export"}
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names[:1] == ["detection.png"] and "scan-cv.png" in names and len(names) == 4
    with open(out / "cleaned.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 351 and list(rows[0]) == ["id", "text", "label", "true_label"]
    # every flag was accepted: fixed errors are right now, flagged clean examples took a wrong label
    assert 0 < summary["fixed"] <= summary["found"]
    assert sum(r["label"] != r["true_label"] for r in rows) == 28 - summary["fixed"] + summary["flagged"] - summary[
        "found"]
    assert json.loads((out / "demo.json").read_text()) == summary
    again = CliRunner().invoke(app, ["report", str(out)])  # the demo's workdir is a complete workdir
    assert again.exit_code == 0 and (out / "report.html").is_file()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 2 and "is not a datablame demo workdir" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_demo_names_an_unknown_encoder_before_touching_the_folder(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--encoder", "bert-huge"])
    assert result.exit_code == 2 and "unknown encoder 'bert-huge'" in result.stderr
    assert not (tmp_path / "d").exists()
