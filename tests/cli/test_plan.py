"""``datablame plan``: each phase's time, memory and disk, from a calibration run that leaves the workdir as it
was; its sizes are the sizes 'index' then writes."""

import json
import shutil

from test_cli import datablame


def test_plan_estimates_the_phases_and_their_sizes(trained_workdir, tmp_path):
    wd = shutil.copytree(trained_workdir, tmp_path / "wd")
    before = sorted(p.relative_to(wd) for p in wd.rglob("*"))
    r = datablame("plan", wd, "--method", "tracin", "--params", "head", "--json", "--sample", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    [plan] = json.loads(r.stdout)
    assert [p["name"] for p in plan["phases"]] == ["vectors", "finalize", "index (cosine)", "index (raw)"]
    assert plan["n"] == 48 and plan["sample"] == 8 and all(p["seconds"] >= 0 for p in plan["phases"])
    assert plan["seconds"] == round(sum(p["seconds"] for p in plan["phases"]), 1)
    assert plan["peak_bytes"] == max(p["peak_bytes"] for p in plan["phases"])
    assert sorted(p.relative_to(wd) for p in wd.rglob("*")) == before  # the calibration wrote nothing
    r = datablame("index", wd, "--method", "tracin", "--params", "head", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    vectors = sum(p.stat().st_size for p in (wd / "vectors" / "tracin").glob("shard-*.npy"))
    assert abs(vectors - plan["phases"][0]["disk_bytes"]) <= 128  # .npy headers aside
    index = (wd / "index" / "tracin-cosine.faiss").stat().st_size
    assert abs(index - plan["phases"][2]["disk_bytes"]) < 1024
    r = datablame("plan", wd, "--workers", "0")
    assert r.returncode == 2 and "--workers must be at least 1" in r.stderr


def test_plan_times_the_exact_hessian_and_the_damped_optimum(trained_workdir):
    before = sorted(p.relative_to(trained_workdir) for p in trained_workdir.rglob("*"))
    r = datablame("plan", trained_workdir, "--method", "influence", "--params", "head", "--curvature", "exact",
                  "--at", "optimum", "--json", "--sample", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    [plan] = json.loads(r.stdout)
    finalize = next(p for p in plan["phases"] if p["name"] == "finalize")
    assert "the exact Hessian" in finalize["note"] and finalize["seconds"] > 0
    assert plan["phases"][0]["name"] == "optimum" and plan["phases"][0]["seconds"] > 0
    # estimated, not run: moving the head would read (and cache) every example's features
    assert sorted(p.relative_to(trained_workdir) for p in trained_workdir.rglob("*")) == before
    r = datablame("plan", trained_workdir, "--method", "influence", "--params", "head", "--at", "checkpoint",
                  "--json", "--sample", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "optimum" not in [p["name"] for p in json.loads(r.stdout)[0]["phases"]]
    # the default (auto): a second set of vectors at the optimum, for the raw index
    r = datablame("plan", trained_workdir, "--method", "influence", "--params", "head", "--json", "--sample", "8",
                  "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert [p["name"] for p in json.loads(r.stdout)[0]["phases"]] == [
        "optimum", "vectors", "finalize", "vectors (optimum)", "finalize (optimum)", "index (cosine)", "index (raw)"]
    r = datablame("plan", trained_workdir, "--method", "influence", "--params", "head", "--curvature", "sketch",
                  "--at", "optimum", "--json", "--sample", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    phases = {p["name"]: p for p in json.loads(r.stdout)[0]["phases"]}
    assert phases["optimum"]["seconds"] > 0 and "Hessian" not in phases["finalize"]["note"]


def test_plan_of_an_ivfpq_index_scales_a_real_calibration_build(tmp_path):
    """Past HNSW's memory, ``--approximate`` plans IVF-PQ: a real build on 10,000 calibration rows, each part
    scaled to n; its disk is the codes, ids and centroids the index at n would hold."""
    import faiss
    import numpy as np

    from datablame.index.plan import ivfpq_phase
    from datablame.index.rows import ArrayRows
    from datablame.index.search import IndexMeta, VectorIndex, ivfpq_shape

    vectors = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    small, large = (ivfpq_phase(vectors, n, "raw", base=0) for n in (10_000, 10_000_000))
    nlist, m = ivfpq_shape(10_000_000, 32)
    assert (nlist, m) == (2048, 16) and f"{nlist} lists" in large.note
    assert large.disk_bytes == 10_000_000 * (m // 2 + 8) + nlist * 32 * 4
    assert large.seconds > 100 * small.seconds > 0 and large.peak_bytes > small.peak_bytes
    meta = IndexMeta(method="m", scoring="raw", kind="ivfpq", n=0, dim=32, key={}, settings={})
    built = VectorIndex.build_ivfpq(ArrayRows(np.resize(vectors, (10_000, 32))), meta)
    assert set(built.meta.ivf["seconds"]) == {"train", "fill", "truth", "sweep"}
    index = tmp_path / "i.faiss"
    faiss.write_index(built.index, str(index))
    assert abs(index.stat().st_size - small.disk_bytes) < 0.05 * small.disk_bytes
