"""Loading data in every supported format, and one-line errors for bad input."""

import json

import numpy as np
import pytest

from datablame.influence.data import load_examples
from datablame.influence.errors import DatablameError

from conftest import SHARED_DATA, make_rows, write_csv


@pytest.fixture
def rows():
    return make_rows(9)


def test_formats_agree(tmp_path, rows):
    import datasets

    csv_path = write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    ref = load_examples(csv_path)
    assert ref.label_names == ["food", "sports", "tech"] and len(ref) == 9
    for name in ["d.tsv", "d.jsonl", "d.parquet", "saved"]:
        ex = load_examples(tmp_path / name)
        assert ex.texts == ref.texts and np.array_equal(ex.labels, ref.labels), name
        assert ex.label_names == ref.label_names
    assert list(ref.ids) == list(range(9))
    assert ref.fingerprint != load_examples(tmp_path / "d.tsv").fingerprint


def test_integer_labels_pairs_and_given_names(tmp_path):
    path = tmp_path / "nli.jsonl"
    path.write_text("".join(json.dumps({"premise": f"p{i}", "hypothesis": f"h{i}", "y": i % 3}) + "\n"
                            for i in range(6)))
    ex = load_examples(path, "premise,hypothesis", "y")
    assert ex.texts[1] == ("p1", "h1") and ex.label_names == ["0", "1", "2"] and list(ex.labels) == [0, 1, 2] * 2
    named = load_examples(path, "premise, hypothesis", "y", label_names=["entail", "neutral", "contra"])
    assert list(named.labels) == [0, 1, 2] * 2


@pytest.mark.parametrize("case, match", [
    ("missing_column", "column 'sentence' not in"),
    ("empty", "is empty"),
    ("unknown_label", "unknown label 'sport'"),
    ("no_file", "not found"),
    ("bad_format", "unknown data format"),
])
def test_bad_input_is_one_clear_error(tmp_path, rows, case, match):
    path = write_csv(tmp_path / "d.csv", rows)
    kwargs = {}
    if case == "missing_column":
        kwargs = {"text_column": "sentence"}
    elif case == "empty":
        path.write_text("")
    elif case == "unknown_label":
        kwargs = {"label_names": ["food", "tech"]}
        path.write_text("text,label\nhello,food\nworld,sport\n")
    elif case == "no_file":
        path = tmp_path / "nope.csv"
    elif case == "bad_format":
        path = tmp_path / "d.xlsx"
        path.write_text("x")
    with pytest.raises(DatablameError, match=match) as info:
        load_examples(path, **kwargs)
    assert "\n" not in str(info.value) and info.value.hint


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"SST-2 not found at {SHARED_DATA} (only beside the project)")
def test_sst2_loads():
    train = load_examples(SHARED_DATA / "train.tsv", "sentence")
    dev = load_examples(SHARED_DATA / "dev.tsv", "sentence", label_names=train.label_names)
    assert (len(train), len(dev)) == (67349, 872)
    assert train.label_names == ["0", "1"] and 0.5 < train.labels.mean() < 0.6
