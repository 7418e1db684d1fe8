"""Sharded work from the user's side: torchrun with two CPU ranks, and ``--shard I/N`` jobs with ``finalize``,
write the very files of one process (vectors, self-influence, manifest, indexes); a lost shard is refused by
``finalize`` in one line and recomputed, alone, by its part's job."""

import json
import shutil
import subprocess
import sys

from test_cli import ENV, datablame

INDEX = ["index", "--method", "tracin", "--params", "head", "--shard-size", "16", "--device", "cpu", "-q"]


def outputs(wd):
    """Every file the vectors and indexes are made of, by name (an index's record without its build time)."""
    def content(p):
        return {k: v for k, v in json.loads(p.read_text()).items() if k != "build_seconds"} \
            if p.parent.name == "index" and p.suffix == ".json" else p.read_bytes()

    return {str(p.relative_to(wd)): content(p) for folder in ("vectors", "index")
            for p in sorted((wd / folder).rglob("*")) if p.is_file()}


def test_torchrun_and_shard_jobs_write_the_files_of_one_process(trained_workdir, tmp_path):
    one, ranks = (shutil.copytree(trained_workdir, tmp_path / name) for name in ("one", "ranks"))
    r = datablame(INDEX[0], one, *INDEX[1:])
    assert r.returncode == 0, r.stderr
    expected = outputs(one)
    assert [n for n in expected if "shard-" in n] == [f"vectors/tracin/shard-0000{i}.npy" for i in range(3)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "datablame.cli", INDEX[0], str(ranks), *INDEX[1:]],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert outputs(ranks) == expected
    # a rank killed before its shard was written: finalize refuses in one line; its part's job computes only it
    shards = {p.name: p.stat().st_mtime_ns for p in (ranks / "vectors" / "tracin").glob("shard-*.npy")}
    (ranks / "vectors" / "tracin" / "shard-00001.npy").unlink()
    r = datablame("finalize", ranks, "--method", "tracin", "--device", "cpu")
    assert r.returncode == 2 and "1 of 3 vector shards are missing" in r.stderr and "(shard 1)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = datablame(INDEX[0], ranks, *INDEX[1:-1], "--shard", "1/2")
    assert r.returncode == 0, r.stderr
    assert "part 1/2 of the vectors done (3 of 3 shards finished)" in " ".join(r.stderr.split())
    after = {p.name: p.stat().st_mtime_ns for p in (ranks / "vectors" / "tracin").glob("shard-*.npy")}
    assert {n for n in after if after[n] != shards.get(n)} == {"shard-00001.npy"}
    r = datablame("finalize", ranks, "--method", "tracin", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert outputs(ranks) == expected


def test_scan_in_parts_then_one_scan_equals_one_scan(trained_workdir, tmp_path):
    """Two ``scan --shard I/N`` parts write the training features in ranges (and the vectors of a scan by
    self-influence); the scan after them reads those, runs no encoder pass, and equals a scan alone."""
    import numpy as np

    one, parts = (shutil.copytree(trained_workdir, tmp_path / name) for name in ("one", "parts"))
    scan = ["--method", "combined", "--device", "cpu"]
    r = datablame("scan", one, *scan, "--json")
    assert r.returncode == 0, r.stderr
    expected = {row["id"]: row["score"] for row in json.loads(r.stdout)["examples"]}
    for i in range(2):
        r = datablame("scan", parts, *scan, "--shard", f"{i}/2", "--shard-size", "16")
        assert r.returncode == 0, r.stderr
        assert f"part {i}/2 of the training features done" in " ".join(r.stderr.split())
    cache = parts / "cache" / "features"
    assert sorted(p.name for p in cache.rglob("rows-*.npy")) == [
        "rows-0000000000-0000000016.npy", "rows-0000000016-0000000032.npy", "rows-0000000032-0000000048.npy"]
    assert sorted(p.name for p in (parts / "vectors" / "tracin").glob("shard-*.npy")) == [
        f"shard-0000{i}.npy" for i in range(3)]
    r = datablame("scan", parts, *scan, "--json", "-v")
    assert r.returncode == 0, r.stderr
    assert "assembled from 3 ranges" in r.stderr and not list(cache.glob("*.shards"))
    got = {row["id"]: row["score"] for row in json.loads(r.stdout)["examples"]}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[i] for i in expected], list(expected.values()), atol=1e-4)
    [a], [b] = (list((wd / "cache" / "features").glob("*.npy")) for wd in (one, parts))
    np.testing.assert_allclose(np.load(a), np.load(b), atol=1e-5)
