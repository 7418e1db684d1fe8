"""``datablame demo``: the whole story on the shipped data, graded against the injected errors (small model)."""

import csv
import datetime as dt
import json

from typer.testing import CliRunner

from datablame.cli.demo import careful_review, demo_labels, injected_errors
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
    # a careful review: every flag decided, every flagged error fixed, no right label made wrong
    assert summary["accepted"] + summary["relabeled"] + summary["rejected"] == summary["flagged"]
    assert summary["rejected"] == summary["flagged"] - summary["found"] and summary["accepted"] > 0
    assert summary["broken"] == 0 and summary["fixed"] == summary["found"] > 0
    given, true = demo_labels()
    assert [int(r["id"]) for r in rows] == list(range(351)) and [r["true_label"] for r in rows] == true
    assert sum(r["label"] != t for r, t in zip(rows, true)) == 28 - summary["fixed"]
    assert sum(g == t != r["label"] for r, g, t in zip(rows, given, true)) == 0
    with open(out / "cleaned.changes.csv", newline="") as fh:
        changes = list(csv.DictReader(fh))
    assert len(changes) == summary["accepted"] + summary["relabeled"]
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


def _flag(flag_id, example_id, label, suggested):
    from datablame.store.flags import FlagView

    return FlagView(flag_id, example_id, "text", label, "mislabeled", "scan", suggested, "open", None, "", "",
                    dt.datetime(2024, 1, 1), 1)


def test_careful_review_accepts_right_suggestions_relabels_wrong_ones_and_rejects_right_labels():
    true = ["billing", "shipping", "technical", "account", "billing"]
    flags = [_flag(10, 0, "shipping", "billing"),    # given wrong, suggestion right → accept
             _flag(11, 1, "billing", "technical"),   # given wrong, suggestion wrong too → relabel
             _flag(12, 2, "technical", "account"),   # given right → reject
             _flag(13, 3, "billing", None),          # given wrong, no suggestion → relabel
             _flag(14, 4, "billing", "billing")]     # given right (suggestion too) → reject, nothing to change
    assert careful_review(flags, true) == {10: "accepted", 11: "relabeled", 12: "rejected", 13: "relabeled",
                                           14: "rejected"}
    assert careful_review(flags[:2], {0: "shipping", 1: "technical"}) == {10: "rejected", 11: "accepted"}
    assert careful_review([], true) == {}
