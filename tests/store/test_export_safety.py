"""Export never destroys anything: it refuses the training data, the store, the workdir's files and folders it did
not create (before writing anything), writes atomically, and gives files the umask's permissions."""

import csv
import os
import stat

import pytest

from datablame.influence.data import load_examples
from datablame.influence.errors import DatablameError
from datablame.influence.workdir import Config, Workdir
from datablame.store.db import default_url, open_db
from datablame.store.export import MARKER, export
from datablame.store.scans import ensure_dataset, find_dataset


@pytest.fixture
def setup(tmp_path):
    """(workdir, data file, store, dataset): a workdir whose data lies in its own folder beside other files."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = data_dir / "train.csv"
    data.write_text("text,label\n" + "".join(f"sentence {i},{'neg' if i % 2 else 'pos'}\n" for i in range(10)))
    (data_dir / "notes.txt").write_text("keep me")
    examples = load_examples(data)
    wd = tmp_path / "wd"
    Workdir(wd).save(Config(data_path=examples.path, data_fingerprint=examples.fingerprint, text_columns=["text"],
                            label_column="label", label_names=examples.label_names))
    db = open_db(default_url(wd))
    ensure_dataset(db, examples)
    yield wd, data, db, find_dataset(db, examples.fingerprint)
    db.close()


def snapshot(*folders):
    """Every file under the folders with its bytes."""
    return {p: p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target, fmt, match", [
    ("data_dir", "hf", "training data"),
    ("data", None, "training data"),
    ("wd", "hf", "is the workdir"),
    ("wd/datablame.db", "csv", "the store"),
    ("wd/config.json", "csv", "workdir's own files"),
    ("wd/checkpoints/x.csv", None, "workdir's own files"),
    ("wd/mine.csv", None, "export did not write it"),
    ("other_dir", "hf", "folder that export did not create"),
    ("other_dir", "csv", "existing folder"),
])
def test_refused_before_anything_is_written(setup, tmp_path, target, fmt, match):
    wd, data, db, dataset = setup
    (wd / "mine.csv").write_text("a user's own file\n")
    (tmp_path / "other_dir").mkdir()
    (tmp_path / "other_dir" / "x").write_text("x")
    paths = {"data_dir": data.parent, "data": data, "wd": wd, "other_dir": tmp_path / "other_dir"}
    out = paths.get(target, tmp_path / target)
    before = snapshot(tmp_path)
    with pytest.raises(DatablameError, match=match) as info:
        export(db, dataset, out, fmt, workdir=wd)
    assert "\n" not in str(info.value) and info.value.hint
    after = snapshot(tmp_path)
    after.pop(wd / "datablame.db-wal", None), before.pop(wd / "datablame.db-wal", None)
    assert {p: b for p, b in after.items() if "datablame.db" not in p.name} == \
        {p: b for p, b in before.items() if "datablame.db" not in p.name}


def test_own_files_and_the_store_are_refused_even_with_force(setup):
    wd, _, db, dataset = setup
    for out, fmt in [(wd / "config.json", "csv"), (wd / "datablame.db", "csv"), (wd, "hf")]:
        before = out.read_bytes() if out.is_file() else None
        with pytest.raises(DatablameError):
            export(db, dataset, out, fmt, workdir=wd, force=True)
        assert before is None or out.read_bytes() == before


def test_a_file_export_wrote_may_be_replaced_and_force_overwrites_others(setup):
    wd, data, db, dataset = setup
    export(db, dataset, wd / "cleaned.csv", workdir=wd)
    export(db, dataset, wd / "cleaned.csv", workdir=wd)  # its own earlier file: replaced without --force
    (wd / "mine.csv").write_text("x")
    export(db, dataset, wd / "mine.csv", workdir=wd, force=True)
    assert (wd / "mine.csv").read_text().startswith("id,text,label")
    export(db, dataset, data, workdir=wd, force=True)  # the user asked for it
    assert [r["id"] for r in csv.DictReader(open(data, newline=""))] == [str(i) for i in range(10)]


def test_hf_folders(setup, tmp_path):
    wd, data, db, dataset = setup
    out = tmp_path / "clean"
    export(db, dataset, out, "hf", workdir=wd)
    assert (out / MARKER).is_file()
    export(db, dataset, out, "hf", workdir=wd)  # its own folder: replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    export(db, dataset, foreign, "hf", workdir=wd, force=True)  # adds the dataset's files, deletes nothing
    assert (foreign / "precious.txt").read_text() == "keep" and (foreign / "state.json").is_file()
    export(db, dataset, data.parent, "hf", workdir=wd, force=True)
    assert (data.parent / "notes.txt").read_text() == "keep me" and data.is_file()
    assert not [p for p in tmp_path.rglob(".*") if p.name != MARKER]  # no temporary leftovers


def test_files_get_the_umasks_permissions(setup, tmp_path):
    wd, _, db, dataset = setup
    old = os.umask(0o022)
    try:
        report = export(db, dataset, wd / "cleaned.csv", workdir=wd)
        export(db, dataset, tmp_path / "clean", "hf", workdir=wd)
    finally:
        os.umask(old)
    for path in (report.out, report.changes_path, wd / "exports.json", wd / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "clean").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "clean").iterdir()} == {0o644}


def test_a_failed_write_leaves_the_old_file(setup, tmp_path, monkeypatch):
    wd, _, db, dataset = setup
    out = tmp_path / "clean.csv"
    export(db, dataset, out, workdir=wd)
    before = out.read_bytes()
    import datablame.store.export as module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "_csv_bytes", boom)
    with pytest.raises(OSError):
        export(db, dataset, out, workdir=wd)
    assert out.read_bytes() == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
