"""Arbitrary text survives load → store → export → load unchanged, character for character, from every input format
into every export format; labels are strings or integers (property-based, with hypothesis)."""

import csv
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datablame.influence.data import load_examples
from datablame.store.db import default_url, open_db
from datablame.store.export import export
from datablame.store.scans import ensure_dataset, find_dataset

SPECIAL = ["", "NA", "null", "None", "nan", "N/A", "مرحبا بالعالم", "שלום\u202e", "👩‍👩‍👧 🎉", "two\nlines",
           "cr\ronly", "crlf\r\nend", "tab\there", 'say "hi", ok', "nul\x00byte", " padded ", "\ufeffbom"]
EXPORTS = {"csv": "out.csv", "jsonl": "out.jsonl", "parquet": "out.parquet", "hf": "out-hf"}


def write_source(folder: Path, fmt: str, texts: list[str], labels: list) -> Path:
    """The rows in one input format, written by other code than datablame's (csv, json, pyarrow, datasets)."""
    if fmt == "csv":
        path = folder / "train.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, quoting=csv.QUOTE_ALL).writerows([["text", "label"], *zip(texts, labels)])
    elif fmt == "tsv":
        path = folder / "train.tsv"
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)), encoding="utf-8")
    elif fmt == "jsonl":
        path = folder / "train.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "train.parquet"
        pq.write_table(pa.table({"text": texts, "label": labels}), path)
    else:
        import datasets

        path = folder / "train-hf"
        datasets.Dataset.from_dict({"text": texts, "label": labels}).save_to_disk(str(path))
    return path


def roundtrip(source_fmt: str, texts: list[str], labels: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        examples = load_examples(write_source(folder, source_fmt, texts, labels))
        assert examples.texts == texts
        assert [examples.label_names[y] for y in examples.labels] == [str(y) for y in labels]
        db = open_db(default_url(folder))
        try:
            ensure_dataset(db, examples)
            dataset = find_dataset(db, examples.fingerprint)
            for fmt, name in EXPORTS.items():
                back = load_examples(export(db, dataset, folder / name, fmt).out)
                assert back.texts == texts, fmt
                assert [back.label_names[y] for y in back.labels] == [str(y) for y in labels], fmt
        finally:
            db.close()


def labelled(texts: list[str], integer: bool) -> list:
    """Two or three classes over the rows (every class present)."""
    names = [0, 1, 2] if integer else ["neg", "pos", "NA"]
    return [names[i % (2 + len(texts) % 2)] for i in range(len(texts))]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "hf"])
@pytest.mark.parametrize("integer", [False, True])
def test_special_texts_and_a_megabyte_line(fmt, integer):
    texts = SPECIAL + ["x" * (1 << 20)]
    if fmt == "tsv":  # a TSV row is one line and a field has no tab: such texts cannot be written in TSV
        texts = [t for t in texts if not set(t) & set("\t\r\n")]
    roundtrip(fmt, texts, labelled(texts, integer))


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(TEXT, min_size=2, max_size=8), fmt=st.sampled_from(["csv", "jsonl", "parquet", "hf"]),
       integer=st.booleans())
@example(texts=["NA", ""], fmt="csv", integer=False)
@example(texts=["-0", "7", "007"], fmt="csv", integer=True)
@example(texts=["-0", "7"], fmt="csv", integer=True)
def test_arbitrary_text_survives(texts, fmt, integer):
    roundtrip(fmt, texts, labelled(texts, integer))


@settings(max_examples=15, deadline=None)
@given(texts=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n"),
                              max_size=40), min_size=2, max_size=8), integer=st.booleans())
def test_arbitrary_tsv_text_survives(texts, integer):
    roundtrip("tsv", texts, labelled(texts, integer))
