"""Faithful reading: text stays text (no NA parsing), encodings are named, every bad file is one line that names
the file, the line or row, and the fix."""

import json

import pytest

from datablame.influence.data import load_examples
from datablame.influence.errors import DatablameError
from datablame.influence.tables import read_table

NA_LIKE = ["NA", "null", "None", "nan", "N/A", "", "NaN", "#N/A", "-nan"]


def write(path, text: str, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_missing_value_lookalikes_stay_text(tmp_path, suffix):
    labels = ["a", "b"] * 5
    if suffix == ".jsonl":
        body = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(NA_LIKE, labels))
    else:
        sep = "," if suffix == ".csv" else "\t"
        body = f"text{sep}label\n" + "".join(f"{t}{sep}{y}\n" for t, y in zip(NA_LIKE, labels))
    ex = load_examples(write(tmp_path / f"d{suffix}", body))
    assert ex.texts == NA_LIKE


def test_utf8_bom_is_read_and_other_encodings_are_named(tmp_path):
    ex = load_examples(write(tmp_path / "bom.csv", "\ufefftext,label\ncafé,a\nthé,b\n"))
    assert ex.texts == ["café", "thé"]
    latin = write(tmp_path / "latin.csv", "text,label\nfine,a\ncafé,b\n", "latin-1")
    with pytest.raises(DatablameError, match=r"not valid utf-8 at line 3") as info:
        load_examples(latin)
    assert "--encoding" in info.value.hint and str(latin) in info.value.message
    assert load_examples(latin, encoding="latin-1").texts == ["fine", "café"]
    with pytest.raises(DatablameError, match="unknown encoding"):
        load_examples(latin, encoding="klingon")


def test_a_malformed_json_line_is_named_without_library_logs(tmp_path, capfd):
    path = write(tmp_path / "d.jsonl", '{"text": "ok", "label": "a"}\n{"text": "broken", "label": \n')
    with pytest.raises(DatablameError, match=r"line 2 of .*d.jsonl is not valid JSON"):
        load_examples(path)
    out, err = capfd.readouterr()
    assert out == err == ""


@pytest.mark.parametrize("body, match", [
    ("text,label\nx,a\ny,a\n", "has the label 'a'"),
    ("text,label\nx,a\ny,\n", "row 1 of d.csv has no label"),
    ("text,label\nx,a\ny,b,extra\n", r"row 1 \(line 3\) of .* has 3 fields"),
    ('text,label\n"unclosed,a\n', "not valid CSV"),
    ("text,text\nx,a\n", "appears twice"),
    ("\n\n", "is empty"),
])
def test_bad_csv_is_one_line(tmp_path, body, match):
    with pytest.raises(DatablameError, match=match) as info:
        load_examples(write(tmp_path / "d.csv", body))
    assert "\n" not in str(info.value) and info.value.hint


def test_list_labels_and_null_texts_are_refused(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "x", "label": ["a", "b"]}\n{"text": "y", "label": "b"}\n')
    with pytest.raises(DatablameError, match="label at row 0 .* is a list"):
        load_examples(path)
    path = write(tmp_path / "n.jsonl", '{"text": null, "label": "a"}\n{"text": "y", "label": "b"}\n')
    with pytest.raises(DatablameError, match="row 0 of n.jsonl has no 'text'"):
        load_examples(path)


def test_integer_columns_and_what_is_not_an_integer(tmp_path):
    table = read_table(write(tmp_path / "d.csv", "a,b,c,d\n1,01,x,0\n-2,2,,-0\n,3,y,5\n"))
    assert table["a"] == [1, -2, ""] and table["b"] == ["01", "2", "3"] and table["c"] == ["x", "", "y"]
    assert table["d"] == ["0", "-0", "5"]
    ex = load_examples(write(tmp_path / "i.csv", "text,label\nx,0\ny,2\nz,1\n"))
    assert ex.label_names == ["0", "1", "2"] and list(ex.labels) == [0, 2, 1]


def test_long_lines_embedded_newlines_and_crlf(tmp_path):
    long = "word " * 250_000
    path = write(tmp_path / "d.csv", f'text,label\r\n"{long}",a\r\n"two\r\nlines, and ""quotes""",b\r\n')
    assert load_examples(path).texts == [long, 'two\r\nlines, and "quotes"']
