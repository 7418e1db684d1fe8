"""kill -9 in the middle of a long command, then the same command again: the result equals an uninterrupted run's,
the store stays consistent, and nothing half-written is left behind. Real console-script processes, killed with
SIGKILL when the file system (or the -v log) shows they reached a given point."""

import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import load_file
import test_cli

# 48 examples / 8 = 6 steps per epoch, 48 steps; checkpoints after steps 12, 24, 36 and 48
TRAIN = ["--epochs", "8", "--batch-size", "8", "--checkpoints", "4", "--lr", "5e-3", "--device", "cpu"]
INDEX = ["--method", "tracin", "--params", "head", "--device", "cpu"]
EXE = os.path.join(os.path.dirname(sys.executable), "datablame")
COMMAND = [EXE] if os.path.exists(EXE) else [sys.executable, "-m", "datablame.cli"]
ENV = {**test_cli.ENV, "OMP_NUM_THREADS": "1"}
"""test_cli's environment, with one CPU thread per process: on a busy machine torch's spinning threads make the
tiny BERT's steps 5 times slower (every run here has the same thread count, so results compare bit for bit)."""


def datablame(*args) -> subprocess.CompletedProcess:
    """``datablame ARGS`` run to its end (:data:`ENV`)."""
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


def killed_when(ready: Callable[[], bool], *args, log: Path) -> int:
    """Run ``datablame ARGS`` (stderr into ``log``) and SIGKILL it as soon as ``ready()`` holds, polled every 5 ms;
    returns its exit status (-9 when killed, 0 when it finished first)."""
    with open(log, "w") as err:
        proc = subprocess.Popen([*COMMAND, *map(str, args)], stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        deadline = time.monotonic() + 240
        while proc.poll() is None and not ready():
            assert time.monotonic() < deadline, "the command neither finished nor reached the kill point"
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()
        return proc.wait()


def recorded(wd: Path) -> int:
    """Checkpoints in the interrupted run's record (0 without one)."""
    try:
        return len(json.loads((wd / "checkpoints" / "progress.json").read_text())["checkpoints"])
    except (OSError, ValueError):
        return 0


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders of atomic writes (``.NAME.*.tmp`` / ``.old``) anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module")
def reference(tiny_bert, tiny_csv, tmp_path_factory) -> Path:
    """A workdir trained by one uninterrupted ``datablame train``."""
    wd = tmp_path_factory.mktemp("uninterrupted") / "wd"
    r = datablame("train", tiny_csv, "--model", tiny_bert, "--out", wd, *TRAIN, "-q")
    assert r.returncode == 0, r.stderr
    return wd


@pytest.fixture(scope="module")
def scanned(reference, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A copy of the reference workdir after one uninterrupted ``datablame scan``, and its ranking."""
    wd = tmp_path_factory.mktemp("scanned") / "wd"
    shutil.copytree(reference, wd)
    r = datablame("scan", wd, "--json", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    return wd, json.loads(r.stdout)["examples"]


def test_train_killed_twice_resumes_to_the_uninterrupted_checkpoints(reference, tiny_bert, tiny_csv, tmp_path):
    wd = tmp_path / "wd"
    args = ["train", tiny_csv, "--model", tiny_bert, "--out", wd, *TRAIN, "-v"]
    # killed once the first checkpoint's folder exists (its record may or may not be written yet), then again
    # once the resumed (or restarted) run has recorded a second checkpoint
    for ready in (lambda: (wd / "checkpoints" / "ck-000").is_dir(), lambda: recorded(wd) >= 2):
        assert killed_when(ready, *args, log=tmp_path / "log") == -signal.SIGKILL
        assert not (wd / "config.json").exists()
    r = datablame(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming at step" in r.stderr
    cut, whole = json.loads((wd / "config.json").read_text()), json.loads((reference / "config.json").read_text())
    assert cut["checkpoints"] == whole["checkpoints"] and cut["training"] == whole["training"]
    for ck in whole["checkpoints"]:
        a, b = (load_file(str(root / ck["path"] / "model.safetensors")) for root in (reference, wd))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), ck["path"]
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == [f"ck-00{i}" for i in range(4)]
    assert not list(wd.glob("checkpoints/*/training_state.pt")) and leftovers(wd) == []


def test_index_killed_resumes_to_the_same_vectors_and_index(reference, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(reference, whole)
    shutil.copytree(reference, cut)
    r = datablame("index", whole, *INDEX, "-q")
    assert r.returncode == 0, r.stderr
    vectors = cut / "vectors" / "tracin"
    # killed while the vectors are computed (their folder exists), then once they are done (the manifest lists
    # the one shard of 48 rows: 'datablame index' has no shard size to make more) but the index is not built
    killed_when(lambda: vectors.is_dir(), "index", cut, *INDEX, log=tmp_path / "log")
    killed_when(lambda: (vectors / "manifest.json").is_file(), "index", cut, *INDEX, log=tmp_path / "log")
    r = datablame("index", cut, *INDEX, "-v")
    assert r.returncode == 0, r.stderr
    names = ["manifest.json", "self_influence.npy", "shard-00000.npy"]
    assert sorted(p.name for p in vectors.iterdir()) == names
    for name in names:
        assert (vectors / name).read_bytes() == (whole / "vectors" / "tracin" / name).read_bytes(), name
    faiss = sorted(p.name for p in (whole / "index").glob("*.faiss"))
    assert faiss == sorted(p.name for p in (cut / "index").glob("*.faiss")) and faiss
    for name in faiss:
        assert (cut / "index" / name).read_bytes() == (whole / "index" / name).read_bytes(), name
    assert leftovers(cut) == []


def check_store(db: Path, n: int = 48, flag_top: float = 0.05) -> None:
    """The store passes SQLite's integrity check, has all of its tables or none (killed before its schema was
    made), and holds whole scans only: a dataset with all its examples, every run with a score per example and
    its top fraction flagged."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {"datasets", "examples", "runs", "scores", "flags"}
        made = tables & {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert made in (set(), tables)
        if not made:
            return
        assert [c for (c,) in con.execute("SELECT count(*) FROM examples GROUP BY dataset_id")] in ([], [n])
        for (run,) in con.execute("SELECT id FROM runs").fetchall():
            assert con.execute("SELECT count(*) FROM scores WHERE run_id = ?", (run,)).fetchone() == (n,)
            flags = con.execute("SELECT count(*) FROM flags WHERE run_id = ? AND status = 'open'", (run,)).fetchone()
            assert flags == (math.ceil(flag_top * n),)


def test_scan_killed_leaves_a_consistent_store_and_reruns_to_the_same_ranking(reference, scanned, tmp_path):
    cut = tmp_path / "wd"
    shutil.copytree(reference, cut)
    log = tmp_path / "log"
    # killed once the store exists (its schema being made, the dataset registered), then right after the ranking
    # is made, while it is being recorded
    for ready in (lambda: (cut / "datablame.db").is_file(), lambda: "flagging the top" in log.read_text()):
        killed_when(ready, "scan", cut, "--device", "cpu", "-v", log=log)
        if (cut / "datablame.db").is_file():
            check_store(cut / "datablame.db")
    r = datablame("scan", cut, "--json", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["examples"] == scanned[1]
    check_store(cut / "datablame.db")
    assert leftovers(cut) == []


def test_export_killed_leaves_the_output_absent_or_whole(scanned, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(scanned[0], wd)
    r = datablame("flags", wd, "accept", "1", "2")  # two of the scan's flags: relabeled to the suggested labels
    assert r.returncode == 0, r.stderr
    r = datablame("export", wd, "--out", tmp_path / "whole" / "cleaned.csv")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cut"
    out.mkdir()
    expected = {name: (tmp_path / "whole" / name).read_bytes() for name in ("cleaned.csv", "cleaned.changes.csv")}
    # killed at the first sign of writing (any entry in the output folder)
    killed_when(lambda: any(out.iterdir()), "export", wd, "--out", out / "cleaned.csv", log=tmp_path / "log")
    for name, content in expected.items():
        assert not (out / name).exists() or (out / name).read_bytes() == content, name
    r = datablame("export", wd, "--out", out / "cleaned.csv")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted(expected)
    assert {name: (out / name).read_bytes() for name in expected} == expected
