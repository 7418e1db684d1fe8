"""Retrieval benchmark: single-query latency and recall@10 of exact and HNSW indexes, and end-to-end explain time.

On the real training sketches of SST-2 (all 67,349 sentences by default; all-MiniLM-L6-v2 encoder frozen, the
head trained with ``datablame train --freeze-encoder``), then on ``--synthetic`` sketches made from them (real
sketches resampled plus Gaussian noise proportional to each one's norm, keeping their spread of norms). Recall is
against NumPy brute force over the same scoring; queries are dev sentences' query vectors (and their negations,
for the opposing search). Prints JSON.

    python bench/retrieval.py [--n 67349] [--synthetic 1000000] [--method tracin] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datablame.index.explain import Explainer, index_workdir  # noqa: E402
from datablame.index.search import IndexMeta, VectorIndex, prepare, recall_at_k  # noqa: E402
from datablame.index.vectors import VectorStore  # noqa: E402
from datablame.influence.build import MethodSettings  # noqa: E402
from datablame.influence.data import load_examples  # noqa: E402
from datablame.influence.train import TrainSettings, train  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from artifacts import minilm, write_tsv  # noqa: E402


def brute_top(x: np.ndarray, queries: np.ndarray, scoring: str, k: int = 10) -> np.ndarray:
    """(m, k) ids of the best inner products, by NumPy over all rows (in blocks of 100k rows)."""
    q = prepare(queries, scoring)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for lo in range(0, len(x), 100_000):
        s = q @ prepare(x[lo:lo + 100_000], scoring).T
        s_all = np.concatenate([best_s, s], 1)
        i_all = np.concatenate([best_i, np.arange(lo, lo + s.shape[1])[None].repeat(len(q), 0)], 1)
        top = np.argsort(-s_all, 1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_i


def measure(x: np.ndarray, queries: np.ndarray, scoring: str, approximate: bool) -> dict:
    """Build time, median single-query latency (ms) and recall@10 against brute force."""
    meta = IndexMeta(method="bench", scoring=scoring, kind="exact", n=0, dim=x.shape[1], key={})
    start = time.perf_counter()
    index = VectorIndex.build(x, meta, approximate)
    build_s = time.perf_counter() - start
    both = np.concatenate([queries, -queries])
    latencies, found = [], []
    for q in both:
        start = time.perf_counter()
        found.append(index.search(q[None], 10)[1][0])
        latencies.append(time.perf_counter() - start)
    return {"kind": index.meta.kind, "n": len(x), "build_s": round(build_s, 2),
            "median_ms": round(1000 * float(np.median(latencies)), 3),
            "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 3),
            "recall_at_10": round(recall_at_k(np.stack(found), brute_top(x, both, scoring)), 4),
            "build_time_recall_at_10": index.meta.recall_at_10}


def synthetic(x: np.ndarray, n: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """n rows: real rows resampled, plus N(0, (noise · ‖row‖)² / D) per coordinate."""
    rng = np.random.default_rng(seed)
    rows = x[rng.integers(0, len(x), n)]
    scale = noise * np.linalg.norm(rows, axis=1, keepdims=True) / np.sqrt(x.shape[1])
    return (rows + scale * rng.standard_normal(rows.shape, dtype=np.float32)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[2] / "shared"
                        / "data" / "sst2")
    parser.add_argument("--n", type=int, default=67349, help="training sentences (the first n)")
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    parser.add_argument("--method", default="tracin")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="keep (and reuse) the workdir here")
    args = parser.parse_args()
    wd = args.workdir or pathlib.Path(tempfile.mkdtemp())
    out: dict = {"benchmark": "retrieval", "method": args.method}
    if not (wd / "config.json").is_file():
        full = load_examples(args.data / "train.tsv", "sentence")
        path = write_tsv(wd.parent / f"{wd.name}-train.tsv", full.texts[:args.n],
                         [full.label_names[y] for y in full.labels[:args.n]])
        start = time.perf_counter()
        train(load_examples(path, "sentence"), minilm(), wd, TrainSettings(
            epochs=10, lr=1e-2, batch_size=32, checkpoints=3, max_length=64, freeze_encoder=True))
        out["train_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    index_workdir(wd, args.method, MethodSettings(), scorings=("cosine",))
    out["index_s"] = round(time.perf_counter() - start, 1)
    x = VectorStore(wd / "vectors" / args.method).load().astype(np.float32)
    dev = load_examples(args.data / "dev.tsv", "sentence").texts[:args.queries]
    explainer = Explainer(wd, args.method, "cosine", cache=False)
    start = time.perf_counter()
    first = explainer.explain(dev[:1])[0].timing
    out["explain_first_query"] = {**first, "total_s": round(time.perf_counter() - start, 3)}
    singles = []
    for text in dev[1:11]:
        start = time.perf_counter()
        timing = explainer.explain([text])[0].timing
        singles.append((timing["query_vectors_s"], timing["search_s"], time.perf_counter() - start))
    out["explain_single_query_median_s"] = dict(zip(("query_vectors", "search", "total"),
                                                    np.round(np.median(np.array(singles), 0), 4).tolist()))
    queries = explainer.queries(dev)[0].vectors.numpy()
    for scoring in ("cosine", "raw"):
        out[f"real_{scoring}"] = [measure(x, queries, scoring, approx) for approx in (False, True)]
    if args.synthetic:
        big = synthetic(x, args.synthetic)
        out["synthetic_cosine"] = [measure(big, queries, "cosine", approx) for approx in (False, True)]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
