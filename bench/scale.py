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

With ``--ann N --ann-workdir WD``, instead: an approximate index over N synthetic vectors shaped like real
sketches (as ``bench/retrieval.py`` makes them: rows of WD's stored ``--ann-method`` vectors resampled, plus
Gaussian noise of 0.3 × the row's norm), written as .npy shards of ``--ann-shard`` rows under ``--ann-dir`` (kept
and reused when their count and shape match: 10M × 256 float32 is 10 GB). ``VectorIndex.build`` with
``approximate=True`` on the stored shards picks the kind for the size (IVF-PQ past ``HNSW_MAX_BYTES``), trains,
fills and measures it; reported: its meta (kind, nlist, nprobe, recall@10 at build on 200 training-like queries
and their negations), build seconds, the process's peak resident memory, and for ``--queries`` other
training-like queries (and their negations) searched one at a time: recall@10 against exact search (streamed
over the shards) and the median and 95th-percentile latency, re-ranking included; beside them ``datablame plan``'s
estimate of the IVF-PQ build (``plan.ivfpq_phase``, calibrated on 64 of WD's vectors) and the saved index's size.
``--ann-finalize`` first times ``finalize``'s reductions over the N vectors (WD's method with its stored settings:
its ``finalize`` and self-influence, reading the shards a block at a time) and the memory they take. One thread per
``--threads``.

    python bench/scale.py --ann 10000000 --ann-workdir WD [--ann-method influence] [--ann-dir /tmp/ann] \
        [--ann-shard 262144] [--ann-kind auto|hnsw|ivfpq] [--ann-finalize] [--queries 200] [--threads 2] \
        [--out bench/results/scale-ann.json]

With ``--neighbours N --neighbours-workdir WD``, instead: the scan's nearest-neighbour step
(``detect.neighbour_label_probabilities``, k ``detect.NEIGHBOURS``) over N synthetic examples shaped like WD's
training features (its final checkpoint's feature cache, as ``scan`` reads it, rows ``resampled`` with their
labels) in a fresh process: seconds, the most resident memory it adds (polled), the search kind (exact up to
``detect.EXACT_NEIGHBOURS_UP_TO`` examples, HNSW beyond), and for ``--queries`` random examples the label shares
of their exact k nearest (brute force) against the step's: the mean absolute difference and the share of examples
whose shares agree to 1e-9.

    python bench/scale.py --neighbours 1000000 --neighbours-workdir WD [--queries 200] [--threads 2] \
        [--out bench/results/scale-neighbours.json]
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

from datablame.index.plan import ivfpq_phase, plan_method, resampled, resident_bytes
from datablame.index.rows import StoredRows
from datablame.index.search import IndexMeta, VectorIndex, exact_top_k, recall_at_k
from datablame.index.vectors import VectorStore
from datablame.influence.atomic import atomic_write_json
from datablame.influence.build import MethodSettings, build_method
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


def synthetic_shards(base: np.ndarray, n: int, folder: Path, shard: int, seed: int = 0) -> StoredRows:
    """n rows like ``base``'s (``plan.resampled``: resampled, plus N(0, (0.3 ‖row‖)² / D) noise per coordinate;
    shard i drawn with the seed [seed, i]), as float32 .npy shards of ``shard`` rows in ``folder``; a shard already
    there with the right shape is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, lo in enumerate(range(0, n, shard)):
        path = folder / f"shard-{i:05d}.npy"
        rows = min(shard, n - lo)
        if not (path.is_file() and np.load(path, mmap_mode="r").shape == (rows, base.shape[1])):
            np.save(folder / f"tmp-{path.name}", resampled(base, rows, np.random.default_rng([seed, i])))
            os.replace(folder / f"tmp-{path.name}", path)
        paths.append(path)
    return StoredRows(paths)


def approximate_at_scale(args) -> dict:
    """Build the approximate index over ``--ann`` synthetic vectors from stored shards; measure it."""
    import resource

    import faiss

    store = VectorStore(args.ann_workdir / "vectors" / args.ann_method)
    base = np.asarray(store.rows(), dtype=np.float32)
    start = time.perf_counter()
    rows = synthetic_shards(base, args.ann, args.ann_dir, args.ann_shard)
    written_s = time.perf_counter() - start
    resident = resident_bytes()
    finalize = finalize_at_scale(args.ann_workdir, args.ann_method, store, rows) if args.ann_finalize else None
    sample = base[np.unique(np.linspace(0, len(base) - 1, 64).astype(int))]  # as plan's calibration samples
    estimate = ivfpq_phase(sample, len(rows), "cosine", resident, chunk=args.ann_shard)
    meta = IndexMeta(method="bench", scoring="cosine", kind="exact", n=0, dim=base.shape[1], key={})
    index = VectorIndex.build(rows, meta, approximate=True, kind=None if args.ann_kind == "auto" else args.ann_kind)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rng = np.random.default_rng(1)  # not the build's sample
    queries = rows[rng.choice(len(rows), args.queries, replace=False)]
    queries = np.concatenate([queries, -queries])
    truth = exact_top_k(rows, queries, "cosine", 10)
    found, seconds = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(index.search(q[None], 10)[1][0])
        seconds.append(time.perf_counter() - t)
    return {"n": len(rows), "dim": rows.shape[1], "base": {"workdir": str(args.ann_workdir), "method": args.ann_method,
                                                          "rows": len(base)},
            "threads": faiss.omp_get_max_threads(), "shards_seconds": round(written_s, 1),
            "kind": index.meta.kind, "build_seconds": round(index.meta.build_seconds, 1),
            "recall_at_10_build": round(index.meta.recall_at_10, 4), "ivf": index.meta.ivf, "hnsw": index.meta.hnsw,
            "peak_rss_bytes_after_build": peak,
            "plan_estimate": {"seconds": round(estimate.seconds, 1), "peak_bytes": estimate.peak_bytes,
                              "disk_bytes": estimate.disk_bytes, "note": estimate.note},
            "index_file_bytes": index_bytes(index), "finalize": finalize,
            "queries": len(queries), "recall_at_10": round(recall_at_k(np.array(found), truth), 4),
            "latency_ms": {"median": round(1000 * float(np.median(seconds)), 2),
                           "p95": round(1000 * float(np.percentile(seconds, 95)), 2)},
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def index_bytes(index: VectorIndex) -> int:
    """Bytes of the index as ``datablame index`` saves it."""
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        return sum(p.stat().st_size for p in Path(folder).glob("*.faiss"))


def finalize_at_scale(workdir: Path, method: str, store: VectorStore, rows: StoredRows) -> dict:
    """``VectorStore.finalize``'s reductions (the method's ``finalize`` and self-influence, read from the shards
    a block at a time) over the synthetic rows, with the workdir's method built as its stored vectors were:
    seconds, and the process's resident memory before and at its peak (measured before the index is built)."""
    import resource

    settings = MethodSettings.from_dict(store.manifest().settings, "cpu")
    built = build_method(workdir, method, settings)
    before, start = resident_bytes(), time.perf_counter()
    if hasattr(built.method, "finalize"):
        built.method.finalize(rows)
    influence = built.method.self_influence(rows, np.zeros(len(rows), dtype=np.int64))
    return {"seconds": round(time.perf_counter() - start, 1), "rows": len(rows), "self_influence": len(influence),
            "resident_bytes_before": before,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def training_features(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, h) float32 training features of a workdir's final checkpoint (its feature cache, as ``scan`` reads
    them) and (n,) labels."""
    from datablame.influence.features import FeatureCache
    from datablame.influence.models import load_classifier
    from datablame.influence.workdir import Workdir

    wd = Workdir(workdir)
    config = wd.load()
    examples = wd.load_examples(config)
    model, task = load_classifier(wd.checkpoint_path(config.checkpoints[-1]), config.label_names, "cpu",
                                  config.max_length)
    features = FeatureCache(examples, wd.features_cache).of(task, model).rows(np.arange(len(examples)))
    return features.float().numpy(), np.asarray(examples.labels)


def neighbour_step(folder: Path, threads: int) -> dict:
    """Run in a fresh process: the scan's neighbour step over ``folder``'s x.npy and labels.npy on ``threads``
    threads (its shares written to shares.npy); seconds, and the most resident memory it added to the loaded
    arrays (/proc polled every 10 ms from a thread)."""
    import threading

    import faiss

    from datablame.influence import detect

    faiss.omp_set_num_threads(threads)  # (and its library loaded before the count starts)
    x, labels = np.load(folder / "x.npy"), np.load(folder / "labels.npy")
    loaded, most, done = resident_bytes(), [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.01):
            most[0] = max(most[0], resident_bytes())

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        seconds, shares = timed(lambda: detect.neighbour_label_probabilities(x, labels, int(labels.max()) + 1))
    finally:
        done.set()
        watcher.join()
    np.save(folder / "shares.npy", shares)
    return {"seconds": seconds, "rss_growth_bytes": max(0, most[0] - loaded)}


def neighbours_at_scale(args) -> dict:
    """The scan's neighbour step over ``--neighbours`` examples resampled from a workdir's features, measured in a
    fresh process; its label shares checked against brute force on ``--queries`` examples."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from datablame.influence import detect

    base, base_labels = training_features(args.neighbours_workdir)
    rng = np.random.default_rng(0)
    source = rng.integers(0, len(base), args.neighbours)
    x, labels = resampled(base, len(source), rng, source=source), base_labels[source]
    k, classes = min(detect.NEIGHBOURS, len(x) - 1), int(labels.max()) + 1
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "x.npy", x)
        np.save(Path(folder) / "labels.npy", labels)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            step = pool.submit(neighbour_step, Path(folder), args.threads).result()
        shares = np.load(Path(folder) / "shares.npy")
    queries = rng.choice(len(x), args.queries, replace=False)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    exact = np.empty((len(queries), classes))
    for i, q in enumerate(queries):
        similarity = unit @ unit[q]
        similarity[q] = -np.inf  # never its own neighbour
        exact[i] = np.bincount(labels[np.argpartition(-similarity, k)[:k]], minlength=classes) / k
    difference = np.abs(shares[queries] - exact).sum(1)
    return {"n": len(x), "dim": x.shape[1], "k": k, "threads": args.threads,
            "base": {"workdir": str(args.neighbours_workdir), "rows": len(base)},
            "kind": "exact" if len(x) <= detect.EXACT_NEIGHBOURS_UP_TO else
            f"hnsw (M {detect.NEIGHBOUR_HNSW_M}, efSearch {max(detect.NEIGHBOUR_EF_SEARCH, k + 1)})",
            **step, "features_bytes": x.nbytes, "queries": len(queries),
            "mean_abs_share_difference": round(float(difference.mean()), 4),
            "share_exact": round(float((difference < 1e-9).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--plan-workdir", type=Path)
    parser.add_argument("--methods", nargs="+", default=["tracin", "influence"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ann", type=int, help="build the approximate index over this many synthetic vectors")
    parser.add_argument("--ann-workdir", type=Path, help="workdir whose stored vectors the synthetic ones imitate")
    parser.add_argument("--ann-method", default="influence")
    parser.add_argument("--ann-dir", type=Path, default=Path(tempfile.gettempdir()) / "datablame-ann")
    parser.add_argument("--ann-shard", type=int, default=262_144)
    parser.add_argument("--ann-kind", default="auto", choices=["auto", "hnsw", "ivfpq"],
                        help="the index kind (auto: the one index --approximate picks for the size)")
    parser.add_argument("--ann-finalize", action="store_true", help="also time finalize's reductions over the "
                        "synthetic vectors (the workdir's method, read from the shards a block at a time)")
    parser.add_argument("--neighbours", type=int, help="time the scan's neighbour step over this many examples")
    parser.add_argument("--neighbours-workdir", type=Path, help="workdir whose training features they imitate")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.neighbours:
        out = neighbours_at_scale(args)
        atomic_write_json(args.out or RESULTS / "scale-neighbours.json", out)
        print(json.dumps(out, indent=2))
        return
    if args.ann:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        out = approximate_at_scale(args)
        atomic_write_json(args.out or RESULTS / "scale-ann.json", out)
        print(json.dumps(out, indent=2))
        return
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
