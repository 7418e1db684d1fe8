"""The cleaned dataset: accepted flags take the suggested label (or are dropped), relabeled ones the reviewer's
label, rejected and open ones stay; a change log beside it; every format."""

import csv
import json

import pytest
from store_helpers import dataset, db, make_issues, store_url  # noqa: F401 (fixtures)

from datablame.influence.data import load_examples
from datablame.influence.errors import DatablameError
from datablame.store import flags
from datablame.store.export import changes_path, export
from datablame.store.scans import ensure_dataset, find_dataset, record_scan


@pytest.fixture
def reviewed(db, dataset):
    record_scan(db, dataset.id, "combined", make_issues(), flag_top=0.2)  # flags 1..4 on examples 0..3
    flags.set_status(db, dataset, [1], "accepted", who="ann")  # example 0: neg → pos
    flags.set_status(db, dataset, [2], "rejected", who="ann")  # example 1 stays pos
    flags.relabel(db, dataset, 3, "neg", who="bob")  # example 2: reviewer keeps neg (no change)
    flags.relabel(db, dataset, 4, "neg", who="bob", note="clearly negative")  # example 3: pos → neg
    flags.add_flag(db, dataset, 9, "duplicate")
    flags.set_status(db, dataset, [5], "accepted")  # example 9: dropped only with --drop
    return dataset


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_applies_decisions_and_logs_changes(db, reviewed, tmp_path):
    report = export(db, reviewed, tmp_path / "clean.csv")
    rows = read_csv(tmp_path / "clean.csv")
    assert list(rows[0]) == ["id", "text", "label"] and len(rows) == 20
    labels = {int(r["id"]): r["label"] for r in rows}
    assert [labels[i] for i in range(5)] == ["pos", "pos", "neg", "neg", "neg"]
    assert labels[9] == "pos"
    log = read_csv(tmp_path / "clean.changes.csv")
    assert [(r["id"], r["old_label"], r["new_label"]) for r in log] == [("0", "neg", "pos"), ("3", "pos", "neg")]
    assert "accepted" in log[0]["reason"] and "clearly negative" in log[1]["reason"]
    assert (report.rows, report.relabeled, report.dropped) == (20, 2, 0)


def test_export_drop(db, reviewed, tmp_path):
    report = export(db, reviewed, tmp_path / "clean.jsonl", drop=True)
    rows = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [i for i in range(20) if i not in (0, 9)]
    assert {r["id"]: r["label"] for r in rows}[3] == "neg"
    log = read_csv(tmp_path / "clean.changes.csv")
    assert [(r["id"], r["new_label"]) for r in log] == [("0", ""), ("3", "neg"), ("9", "")]
    assert (report.rows, report.relabeled, report.dropped) == (18, 1, 2)


def test_parquet_and_hf_formats(db, reviewed, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    export(db, reviewed, tmp_path / "clean.parquet")
    assert pq.read_table(tmp_path / "clean.parquet").column("label").to_pylist()[:4] == ["pos", "pos", "neg", "neg"]
    for _ in range(2):  # a second export replaces the folder
        export(db, reviewed, tmp_path / "clean", fmt="hf", drop=True)
    ds = datasets.load_from_disk(str(tmp_path / "clean"))
    assert len(ds) == 18 and ds.column_names == ["id", "text", "label"]
    assert changes_path(tmp_path / "clean").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_unknown_format_is_a_user_error(db, reviewed, tmp_path):
    with pytest.raises(DatablameError, match="cannot tell the format"):
        export(db, reviewed, tmp_path / "clean.xlsx")
    with pytest.raises(DatablameError, match="unknown format"):
        export(db, reviewed, tmp_path / "clean.csv", fmt="xml")


def test_export_keeps_the_files_other_columns_and_only_while_it_is_unchanged(db, tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("text,label,source\n" + "".join(f"sentence {i},{'neg' if i % 2 == 0 else 'pos'},s{i}\n"
                                                   for i in range(20)))
    examples = load_examples(data)
    ensure_dataset(db, examples)
    ds = find_dataset(db, examples.fingerprint)
    record_scan(db, ds.id, "cv", make_issues(), flag_top=0.05)
    flags.set_status(db, ds, [1], "accepted")
    export(db, ds, tmp_path / "clean.csv")
    rows = read_csv(tmp_path / "clean.csv")
    assert list(rows[0]) == ["id", "text", "label", "source"]
    assert (rows[0]["label"], rows[0]["source"], rows[7]["source"]) == ("pos", "s0", "s7")
    data.write_text(data.read_text() + "sentence 20,neg,s20\n")  # changed since the scan: the store's columns only
    export(db, ds, tmp_path / "clean2.csv")
    assert list(read_csv(tmp_path / "clean2.csv")[0]) == ["id", "text", "label"]
