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


def test_plan_times_the_exact_hessian(trained_workdir):
    r = datablame("plan", trained_workdir, "--method", "influence", "--params", "head", "--curvature", "exact",
                  "--json", "--sample", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    [plan] = json.loads(r.stdout)
    finalize = next(p for p in plan["phases"] if p["name"] == "finalize")
    assert "the exact Hessian" in finalize["note"] and finalize["seconds"] > 0
