"""Scale benchmarks: a scan of many rows written to SQLite and to PostgreSQL; ``datablame plan``'s estimates
beside the measured run. JSON.

For each database (SQLite in WAL mode in a temporary folder; a throwaway PostgreSQL server from
``datablame.store.testing``, skipped with its reason where none can be started): register a dataset of ``--rows``
synthetic examples (``ensure_dataset``, bulk inserts), record a scan of them with the top 5% flagged
(``record_scan``: the scores in bulk, then the flags), record it again (a rescan replaces the run's rows in one
transaction), and read the first and a deep page of flags by suspicion (``page_flags``). Seconds per step, rows
per second, and the store's size on disk for SQLite.

    python bench/scale.py [--rows 1000000] [--databases sqlite postgresql] [--out bench/results/scale-store.json]

With ``--plan-workdir WD``, instead: for each of ``--methods``, ``plan_method``'s estimate (time, peak memory,
disk) beside ``datablame index WD --method M`` measured in a subprocess on a copy of the workdir (its checkpoints
and feature cache, no vectors or index): wall seconds, the child's peak resident memory, and the bytes written.

    python bench/scale.py --plan-workdir WD [--methods tracin influence] [--out bench/results/scale-plan.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from datablame.index.plan import plan_method
from datablame.influence.atomic import atomic_write_json
from datablame.influence.build import MethodSettings
from datablame.influence.data import Examples
from datablame.influence.detect import LabelIssues
from datablame.store.db import default_url, open_db
from datablame.store.flags import page_flags
from datablame.store.scans import ensure_dataset, find_dataset, record_scan
from datablame.store.testing import PostgresUnavailable, new_database, temporary_postgres

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(rows: int, seed: int = 0) -> tuple[Examples, LabelIssues]:
    """``rows`` short texts in two classes and a scan ranking of them (random scores)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    examples = Examples([f"synthetic sentence {i} about {'good' if y else 'bad'} things" for i, y in
                         enumerate(labels)], labels, ["negative", "positive"], path="synthetic",
                        fingerprint=f"synthetic-{rows}-{seed}")
    score = rng.random(rows)
    probability = rng.random(rows)
    issues = LabelIssues(order=np.argsort(-score), score=score, suggested=1 - labels,
                         label_probability=probability)
    return examples, issues


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return round(time.perf_counter() - start, 3), result


def measure(url: str, examples: Examples, issues: LabelIssues) -> dict:
    """Seconds to register the examples, record the scan, record it again, and read two pages of flags."""
    db = open_db(url)
    try:
        register_s, _ = timed(lambda: ensure_dataset(db, examples))
        dataset = find_dataset(db, examples.fingerprint)
        scan_s, record = timed(lambda: record_scan(db, dataset.id, "cv", issues, flag_top=0.05))
        rescan_s, _ = timed(lambda: record_scan(db, dataset.id, "cv", issues, flag_top=0.05))
        first_s, page = timed(lambda: page_flags(db, dataset, limit=50))
        cursor = page.next
        for _ in range(98):  # to the cursor of page 100 (or the last page's)
            following = page_flags(db, dataset, after=cursor, limit=50).next
            cursor = following or cursor
        deep_s, _ = timed(lambda: page_flags(db, dataset, after=cursor, limit=50))
    finally:
        db.close()
    rows = len(examples)
    return {"register_examples_s": register_s, "record_scan_s": scan_s, "rescan_s": rescan_s,
            "scores_per_s": round(rows / scan_s), "flags": record.flagged,
            "first_page_ms": round(first_s * 1000, 1), "page_100_ms": round(deep_s * 1000, 1)}


@contextlib.contextmanager
def database(kind: str, folder: Path):
    """The URL of a fresh store of ``kind`` (``sqlite`` or ``postgresql``)."""
    if kind == "sqlite":
        yield default_url(folder)
    else:
        with temporary_postgres() as url:
            yield new_database(url)


MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")


def plan_against_run(workdir: Path, method: str) -> dict:
    """The plan's estimate for ``index --method METHOD`` and the measured run, on a copy of the workdir."""
    estimate = plan_method(workdir, method, MethodSettings.faithful()).to_json()
    with tempfile.TemporaryDirectory(dir=workdir.parent) as folder:
        copy = Path(folder) / "wd"
        shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("vectors", "index", "queries", "*.db*"))
        exe = Path(sys.executable).with_name("datablame")
        start = time.perf_counter()
        peak = subprocess.run([sys.executable, "-c", MEASURE, str(exe), "index", str(copy), "--method", method, "-q"],
                              check=True, capture_output=True, text=True, env=os.environ).stdout
        seconds = time.perf_counter() - start
        written = sum(p.stat().st_size for folder in ("vectors", "index") for p in (copy / folder).rglob("*")
                      if p.is_file())
    return {"estimate": {k: estimate[k] for k in ("seconds", "peak_bytes", "disk_bytes", "phases")},
            "measured": {"seconds": round(seconds, 1), "peak_bytes": int(peak.strip().splitlines()[-1]),
                         "disk_bytes": written}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--plan-workdir", type=Path)
    parser.add_argument("--methods", nargs="+", default=["tracin", "influence"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.plan_workdir:
        out = {"workdir": str(args.plan_workdir), "methods": {m: plan_against_run(args.plan_workdir, m)
                                                               for m in args.methods}}
        atomic_write_json(args.out or RESULTS / "scale-plan.json", out)
        print(json.dumps(out, indent=2))
        return
    examples, issues = synthetic(args.rows)
    out = {"rows": args.rows, "databases": {}}
    for kind in args.databases:
        with tempfile.TemporaryDirectory() as folder:
            try:
                with database(kind, Path(folder)) as url:
                    out["databases"][kind] = measure(url, examples, issues)
                    if kind == "sqlite":
                        out["databases"][kind]["size_mb"] = round(
                            sum(p.stat().st_size for p in Path(folder).iterdir()) / 2**20, 1)
            except PostgresUnavailable as exc:
                out["databases"][kind] = {"skipped": str(exc)}
    atomic_write_json(args.out or RESULTS / "scale-store.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
