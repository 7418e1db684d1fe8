"""FAISS indexes over the training vectors: build, save, load, search, and refuse stale ones.

One index per (method, scoring) in ``WORKDIR/index/``::

    <method>-<scoring>.faiss   the FAISS index (inner product)
    <method>-<scoring>.json    :class:`IndexMeta`: what it was built from (the vectors' key: data fingerprint,
                               checkpoints, parameters, projection and seed), the method settings, and for an
                               approximate index its measured recall@10

Scoring ``raw`` searches the method's inner products <v_i, u_q>; ``cosine`` searches unit vectors, i.e.
<v_i, u_q> / (‖v_i‖ ‖u_q‖), which keeps a few large-gradient examples from topping every list. Supporting
examples are the top of the search with u_q, opposing ones the top of the search with −u_q.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from datablame.influence.atomic import atomic_path, atomic_write_json
from datablame.influence.build import key_changes
from datablame.influence.errors import DatablameError, check_choice

SCORINGS = ("cosine", "raw")
DEFAULT_SCORING = "cosine"  # bench/artifacts.py: cosine names planted causes, raw names large-gradient examples
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = (128, 256, 512, 1024)  # the smallest whose measured recall@10 reaches RECALL_MARGIN is kept
RECALL_TARGET = 0.95
RECALL_MARGIN = 0.97  # on the build-time sample: dev queries recalled up to 0.02 less (bench/retrieval.py)
RECALL_QUERIES = 200


@dataclass
class IndexMeta:
    """method, scoring (raw | cosine), kind (exact | hnsw), n vectors of dimension dim; key: what the vectors
    were computed from; settings: the method settings that rebuild the query side; recall_at_10: measured
    against exact search at build time (approximate indexes); build_seconds: wall time of the build."""

    method: str
    scoring: str
    kind: str
    n: int
    dim: int
    key: dict
    settings: dict = field(default_factory=dict)
    recall_at_10: float | None = None
    build_seconds: float = 0.0
    hnsw: dict | None = None


def prepare(vectors: np.ndarray, scoring: str) -> np.ndarray:
    """(m, D) float32 rows as the index of ``scoring`` holds or searches them (unit rows for cosine; zero rows
    stay zero)."""
    check_choice("scoring", scoring, SCORINGS)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if scoring == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(x, dtype=np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found_q ∩ exact_q| / |exact_q|, for (m, k) id arrays (−1 = no result)."""
    hits = [len(set(f[f >= 0]) & set(e[e >= 0])) / max(1, int((e >= 0).sum())) for f, e in zip(found, exact)]
    return float(np.mean(hits)) if hits else 1.0


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row of (b, n) scores, largest first: (b, k) scores and (b, k) int64 column ids
    (k ≤ n; ties in the order argsort leaves them)."""
    ids = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    best = np.take_along_axis(scores, ids, 1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(best, order, 1), np.take_along_axis(ids, order, 1)


SCORE_BLOCK = 2 ** 25
"""Scores (float32: 128 MiB) one matrix product of :meth:`VectorIndex.search_both` computes at most."""


class VectorIndex:
    """A FAISS inner-product index with its :class:`IndexMeta`."""

    def __init__(self, index: faiss.Index, meta: IndexMeta):
        self.index, self.meta = index, meta

    @classmethod
    def build(cls, vectors: np.ndarray, meta: IndexMeta, approximate: bool = False, seed: int = 0,
              queries: np.ndarray | None = None, fallback: bool = True) -> "VectorIndex":
        """Index (n, D) training vectors; exact (``IndexFlatIP``) or HNSW, whose recall@10 against exact search is
        measured on (m, D) sample ``queries`` and their negations (supporting and opposing searches); by default
        ``RECALL_QUERIES`` training vectors. HNSW keeps the smallest efSearch of ``HNSW_EF_SEARCH`` whose recall
        reaches ``RECALL_MARGIN`` (queries unlike the training vectors, such as curvature-corrected influence
        queries, need a wider search), else the largest; if even that stays below ``RECALL_TARGET`` the exact index
        is kept instead (``fallback``; ``meta.hnsw`` records what was measured), since an index that misses
        the causes is no shortcut."""
        start = time.perf_counter()
        x = prepare(vectors, meta.scoring)
        exact = faiss.IndexFlatIP(x.shape[1])
        exact.add(x)
        index = exact
        meta.kind, meta.n, meta.dim, meta.recall_at_10, meta.hnsw = "exact", x.shape[0], x.shape[1], None, None
        if approximate:
            index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.add(x)
            meta.kind = "hnsw"
            if queries is None:
                rows = np.random.default_rng(seed).choice(len(x), min(RECALL_QUERIES, len(x)), replace=False)
                sample = x[rows]
            else:
                sample = prepare(queries, meta.scoring)
            sample = np.concatenate([sample, -sample])
            k = min(10, len(x))
            truth = exact.search(sample, k)[1]
            measured = {}
            for ef in HNSW_EF_SEARCH:
                index.hnsw.efSearch = ef
                measured[ef] = recall_at_k(index.search(sample, k)[1], truth)
                if measured[ef] >= RECALL_MARGIN:
                    break
            meta.recall_at_10 = measured[ef]
            meta.hnsw = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef,
                         "recall_by_efSearch": {str(e): round(r, 4) for e, r in measured.items()}}
            if fallback and measured[ef] < RECALL_TARGET:
                index, meta.kind, meta.recall_at_10 = exact, "exact", 1.0
                meta.hnsw["rejected"] = f"recall@10 below {RECALL_TARGET} at every efSearch: exact search kept"
        meta.build_seconds = time.perf_counter() - start
        return cls(index, meta)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each (b, D) query: (b, k') float32 scores (raw inner products, or cosines) and (b, k') int64 ids,
        best first, k' = min(k, n)."""
        k = max(0, min(k, self.meta.n))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        self._check_dim(queries)
        scores, ids = self.index.search(prepare(queries, self.meta.scoring), k)
        return scores, ids

    def search_both(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The top-k and the bottom-k of each (b, D) query: supporting (scores, ids), best first, and opposing
        (scores, ids), most negative first; as :meth:`search` with ``queries`` and with ``-queries`` (scores
        negated back). On an exact index both come from one pass over the vectors (one matrix product per block
        of queries, then a partial sort of each end), half the work of two searches."""
        k = max(0, min(k, self.meta.n))
        if not isinstance(self.index, faiss.IndexFlat) or k == 0:
            s, i = self.search(queries, k)
            o, j = self.search(-queries, k)
            return s, i, -o, j
        self._check_dim(queries)
        q = prepare(queries, self.meta.scoring)
        x = faiss.rev_swig_ptr(self.index.get_xb(), self.meta.n * self.meta.dim).reshape(self.meta.n, self.meta.dim)
        out = [np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64),
               np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)]
        block = max(1, SCORE_BLOCK // self.meta.n)  # queries per matrix product: at most SCORE_BLOCK scores
        for lo in range(0, len(q), block):
            scores = q[lo:lo + block] @ x.T  # (b, n)
            for sign, (s_out, i_out) in ((1.0, out[:2]), (-1.0, out[2:])):
                best, ids = top_k(sign * scores, k)
                s_out[lo:lo + block], i_out[lo:lo + block] = sign * best, ids
        return tuple(out)

    def _check_dim(self, queries: np.ndarray) -> None:
        if queries.shape[1] != self.meta.dim:
            raise DatablameError(f"query vectors have dimension {queries.shape[1]}, the index {self.meta.dim}",
                                 "rebuild the index with 'datablame index'")

    @staticmethod
    def paths(folder: str | os.PathLike, method: str, scoring: str) -> tuple[Path, Path]:
        stem = Path(folder) / f"{method}-{scoring}"
        return stem.with_suffix(".faiss"), stem.with_suffix(".json")

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index, then its meta, each atomically (the meta names a finished index only)."""
        index_path, meta_path = self.paths(folder, self.meta.method, self.meta.scoring)
        with atomic_path(index_path) as tmp:
            faiss.write_index(self.index, str(tmp))
        atomic_write_json(meta_path, asdict(self.meta))

    @classmethod
    def load(cls, folder: str | os.PathLike, method: str, scoring: str) -> "VectorIndex":
        check_choice("scoring", scoring, SCORINGS)
        index_path, meta_path = cls.paths(folder, method, scoring)
        if not (index_path.is_file() and meta_path.is_file()):
            raise DatablameError(f"no {scoring} index for {method} in {Path(folder)}",
                                 f"run 'datablame index WORKDIR --method {method}'")
        meta = IndexMeta(**json.loads(meta_path.read_text()))
        index = faiss.read_index(str(index_path))
        if meta.kind == "hnsw":
            index.hnsw.efSearch = meta.hnsw["efSearch"]
        return cls(index, meta)

    def check_fresh(self, key: dict) -> None:
        """Refuse an index built from other data, checkpoints, parameters or projection than ``key`` names."""
        changed = key_changes(self.meta.key, key)
        if changed:
            raise DatablameError(
                f"the {self.meta.method} index is stale ({', '.join(changed)} changed since it was built)",
                f"rebuild it with 'datablame index WORKDIR --method {self.meta.method}'")
