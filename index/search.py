"""FAISS indexes over the training vectors: build, save, load, search, and refuse stale ones.

One index per (method, scoring) in ``WORKDIR/index/``::

    <method>-<scoring>.faiss   the FAISS index (inner product)
    <method>-<scoring>.json    :class:`IndexMeta`: what it was built from (the vectors' key: data fingerprint,
                               checkpoints, parameters, projection and seed), the method settings, and for an
                               approximate index its measured recall@10

Kinds: ``exact`` (``IndexFlatIP``: every vector in memory, searched exhaustively); ``hnsw`` (a graph over the
vectors, in memory); ``ivfpq`` (``index --approximate`` when HNSW would need more than :data:`HNSW_MAX_BYTES`):
an inverted file of product-quantised codes (FAISS's fast-scan layout: 4-bit codes scanned with SIMD), trained
once on a sample, filled shard by shard from the stored vectors (:class:`.rows.StoredRows`) without loading them
whole; each search takes its :data:`IVF_CANDIDATES` best candidates by code and re-ranks them exactly on the
stored vectors, so the scores it returns are exact.

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
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np

from datablame.influence.atomic import atomic_path, atomic_write_json
from datablame.influence.build import key_changes
from datablame.influence.errors import DatablameError, check_choice

from .rows import ArrayRows, StoredRows

SCORINGS = ("cosine", "raw")
DEFAULT_SCORING = "cosine"  # bench/artifacts.py: cosine names planted causes, raw names large-gradient examples
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = (128, 256, 512, 1024)  # the smallest whose measured recall@10 reaches RECALL_MARGIN is kept
RECALL_TARGET = 0.95
RECALL_MARGIN = 0.97  # on the build-time sample: dev queries recalled up to 0.02 less (bench/retrieval.py)
RECALL_QUERIES = 200
HNSW_MAX_BYTES = 4 << 30
"""An approximate index over vectors whose HNSW build would take more memory than this is IVF-PQ instead: the
build holds three float32 copies of the vectors (as given or scored, the exact index its recall is measured
against, HNSW's own) and the base layer's links; 4 GiB is about 1.3M vectors of dimension 256 (measured at 1M:
3.7 GB peak in ``bench/scale.py``)."""
IVF_NPROBE = (8, 16, 32, 64, 128, 256, 512)  # inverted lists visited: the smallest reaching RECALL_MARGIN is kept
IVF_CANDIDATES = 1000  # candidates per search re-ranked exactly on the stored vectors (measured in bench/scale.py)
IVF_MIN_N = 10_000  # below this HNSW's memory is no concern: HNSW or exact instead
IVF_TRAIN_PER_LIST = 64  # training sample: this many vectors per inverted list (FAISS asks at least 39)


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
    ivf: dict | None = None


def prepare(vectors: np.ndarray, scoring: str) -> np.ndarray:
    """(m, D) float32 rows as the index of ``scoring`` holds or searches them (unit rows for cosine; zero rows
    stay zero)."""
    check_choice("scoring", scoring, SCORINGS)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if scoring == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(x, dtype=np.float32)


def approximate_kind(n: int, dim: int) -> str:
    """The approximate index for n vectors of dimension dim: ``hnsw`` while its build (three float32 copies of
    the vectors and the base layer's links) fits in :data:`HNSW_MAX_BYTES`, else ``ivfpq`` (from
    :data:`IVF_MIN_N` vectors on)."""
    return "ivfpq" if n * (3 * 4 * dim + 2 * HNSW_M * 4) > HNSW_MAX_BYTES and n >= IVF_MIN_N else "hnsw"


def running_top_k(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int,
                  signs: Sequence[float] = (1.0,)) -> list[tuple[np.ndarray, np.ndarray]]:
    """The top-k of each (m, D) prepared query over training rows that come as ``blocks`` (first id, (b, D)
    prepared rows), merged as they come: for each sign s of ``signs``, (m, k) float32 scores and (m, k) int64 ids
    of the k rows with the largest s · score, best first (scores given back unsigned; ties: the lower id first).
    Queries go :data:`SCORE_QUERIES` at a time and rows in slices of at most :data:`SCORE_BLOCK` scores per
    product, so it never holds a queries × training matrix, however many rows come."""
    out = [(np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
           for _ in signs]
    step = max(k, SCORE_BLOCK // max(1, min(len(queries), SCORE_QUERIES)))  # training rows per product
    for start, block in blocks:
        for lo in range(0, len(block), step):
            part = block[lo:lo + step]
            for qlo in range(0, len(queries), SCORE_QUERIES):
                scores = queries[qlo:qlo + SCORE_QUERIES] @ part.T
                for sign, (best_s, best_i) in zip(signs, out):
                    s, i = top_k(sign * scores, min(k, len(part)))
                    s = np.concatenate([best_s[qlo:qlo + SCORE_QUERIES], s], 1)
                    i = np.concatenate([best_i[qlo:qlo + SCORE_QUERIES], i + start + lo], 1)
                    keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
                    best_s[qlo:qlo + SCORE_QUERIES] = np.take_along_axis(s, keep, 1)
                    best_i[qlo:qlo + SCORE_QUERIES] = np.take_along_axis(i, keep, 1)
    return [(sign * best_s, best_i) for sign, (best_s, best_i) in zip(signs, out)]


def ivfpq_shape(n: int, dim: int) -> tuple[int, int]:
    """(nlist, m) of an IVF-PQ index over n vectors of dimension ``dim``: the largest power of two ≤ √n
    inverted lists (16 … 4096), and the most sub-quantisers (4 bits each) dividing D into parts of 2+ dimensions."""
    nlist = int(2 ** np.clip(np.floor(np.log2(np.sqrt(n))), 4, 12))
    return nlist, max(d for d in range(1, max(1, dim // 2) + 1) if dim % d == 0)


def exact_top_k(rows, queries: np.ndarray, scoring: str, k: int) -> np.ndarray:
    """(m, k) int64 ids of the exact top-k of each (m, D) query over stored ``rows`` (StoredRows or ArrayRows),
    streamed chunk by chunk with a running top-k: the truth an IVF-PQ index's recall is measured against."""
    prepared = ((start, prepare(chunk, scoring)) for start, chunk in rows.chunks())
    return running_top_k(prepare(queries, scoring), prepared, k)[0][1]


def _smallest_reaching_margin(settings: Sequence[int], recall_of: Callable[[int], float]
                              ) -> tuple[int, dict[int, float]]:
    """The first of increasingly wide search ``settings`` (HNSW's efSearch, IVF's nprobe) whose recall (measured by
    ``recall_of``, which also leaves the index searching at that setting) reaches ``RECALL_MARGIN``, else the last;
    and the recall measured at each setting tried."""
    measured = {}
    for setting in settings:
        measured[setting] = recall_of(setting)
        if measured[setting] >= RECALL_MARGIN:
            break
    return setting, measured


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
"""Scores (float32: 128 MiB) one matrix product of :func:`running_top_k` computes at most."""

SCORE_QUERIES = 4096
"""Queries :func:`running_top_k` scores together (a training slice then has at least SCORE_BLOCK / 4096 rows)."""


class VectorIndex:
    """A FAISS inner-product index with its :class:`IndexMeta`."""

    def __init__(self, index: faiss.Index, meta: IndexMeta, rows: StoredRows | None = None):
        self.index, self.meta, self.rows = index, meta, rows  # rows: the stored vectors an IVF-PQ index re-ranks on

    @classmethod
    def build(cls, vectors: np.ndarray | StoredRows, meta: IndexMeta, approximate: bool = False, seed: int = 0,
              queries: np.ndarray | None = None, fallback: bool = True, kind: str | None = None) -> "VectorIndex":
        """Index (n, D) training vectors; exact (``IndexFlatIP``), HNSW, or IVF-PQ (``kind``; None: exact, or when
        ``approximate`` the kind :func:`approximate_kind` picks for this size; see :meth:`build_ivfpq`).

        HNSW's recall@10 against exact search is measured on (m, D) sample ``queries`` and their negations
        (supporting and opposing searches); by default ``RECALL_QUERIES`` training vectors. HNSW keeps the smallest efSearch of ``HNSW_EF_SEARCH`` whose recall
        reaches ``RECALL_MARGIN`` (queries unlike the training vectors, such as curvature-corrected influence
        queries, need a wider search), else the largest; if even that stays below ``RECALL_TARGET`` the exact index
        is kept instead (``fallback``; ``meta.hnsw`` records what was measured), since an index that misses
        the causes is no shortcut."""
        kind = kind or (approximate_kind(*vectors.shape) if approximate else "exact")
        check_choice("index kind", kind, ("exact", "hnsw", "ivfpq"))
        if kind == "ivfpq":
            rows = vectors if isinstance(vectors, StoredRows) else ArrayRows(np.asarray(vectors))
            return cls.build_ivfpq(rows, meta, seed, queries)
        approximate = kind == "hnsw"
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

            def recall_at(ef: int) -> float:
                index.hnsw.efSearch = ef
                return recall_at_k(index.search(sample, k)[1], truth)

            ef, measured = _smallest_reaching_margin(HNSW_EF_SEARCH, recall_at)
            meta.recall_at_10 = measured[ef]
            meta.hnsw = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef,
                         "recall_by_efSearch": {str(e): round(r, 4) for e, r in measured.items()}}
            if fallback and measured[ef] < RECALL_TARGET:
                index, meta.kind, meta.recall_at_10 = exact, "exact", 1.0
                meta.hnsw["rejected"] = f"recall@10 below {RECALL_TARGET} at every efSearch: exact search kept"
        meta.build_seconds = time.perf_counter() - start
        return cls(index, meta)

    @classmethod
    def build_ivfpq(cls, rows: StoredRows | ArrayRows, meta: IndexMeta, seed: int = 0,
                    queries: np.ndarray | None = None) -> "VectorIndex":
        """IVF-PQ over stored rows, never holding them whole: nlist = the largest power of two ≤ √n (16 … 4096)
        inverted lists, codes of 4 bits per sub-vector of about 2 dimensions (D/4 bytes per vector, FAISS's
        ``IndexIVFPQFastScan``: at 10M, 10× faster to scan than 8-bit codes of 4 dimensions), trained on
        ``IVF_TRAIN_PER_LIST`` × nlist rows drawn with ``seed``, then filled chunk by chunk. Recall@10 of the
        re-ranked search is measured as HNSW's is (sample ``queries`` or training rows, and their negations)
        against exact top-10s streamed over the rows; the smallest nprobe of :data:`IVF_NPROBE` reaching
        ``RECALL_MARGIN`` is kept, else the largest (``meta.ivf`` records every measurement, and the seconds of
        training, filling, the exact top-10s and the nprobe sweep, which ``datablame plan`` scales)."""
        start = time.perf_counter()
        n, dim = rows.shape
        if n < IVF_MIN_N:
            raise DatablameError(f"{n} vectors are too few for an IVF-PQ index (it needs {IVF_MIN_N})",
                                 "build an exact or HNSW index instead")
        nlist, m = ivfpq_shape(n, dim)
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(dim), dim, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        index.train(prepare(rows[train], meta.scoring))
        seconds = {"train": time.perf_counter() - start}
        for _, chunk in rows.chunks():
            index.add(prepare(chunk, meta.scoring))
        seconds["fill"] = time.perf_counter() - start - sum(seconds.values())
        built = cls(index, meta, rows)
        meta.kind, meta.n, meta.dim = "ivfpq", n, dim
        sample = rows[rng.choice(n, min(RECALL_QUERIES, n), replace=False)] if queries is None else queries
        sample = np.concatenate([sample, -sample])
        truth = exact_top_k(rows, sample, meta.scoring, 10)
        seconds["truth"] = time.perf_counter() - start - sum(seconds.values())

        def recall_at(nprobe: int) -> float:
            index.nprobe = nprobe
            return recall_at_k(built.search(sample, 10)[1], truth)

        nprobe, measured = _smallest_reaching_margin(sorted({min(p, nlist) for p in IVF_NPROBE}), recall_at)
        meta.recall_at_10 = measured[nprobe]
        seconds["sweep"] = time.perf_counter() - start - sum(seconds.values())
        meta.ivf = {"nlist": nlist, "pq": f"{m}x4 (fast scan)", "nprobe": nprobe, "candidates": IVF_CANDIDATES,
                    "train_rows": len(train), "recall_by_nprobe": {str(p): round(r, 4) for p, r in measured.items()},
                    "seconds": {k: round(v, 3) for k, v in seconds.items()}}
        meta.build_seconds = time.perf_counter() - start
        return built

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each (b, D) query: (b, k') float32 scores (raw inner products, or cosines) and (b, k') int64 ids,
        best first, k' = min(k, n)."""
        k = max(0, min(k, self.meta.n))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        self._check_dim(queries)
        q = prepare(queries, self.meta.scoring)
        if self.meta.kind != "ivfpq":
            return self.index.search(q, k)
        _, candidates = self.index.search(q, max(k, IVF_CANDIDATES))  # then exact scores on the stored rows
        scores, ids = np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        for row, found in enumerate(candidates):
            found = found[found >= 0]
            exact = prepare(self.rows[found], self.meta.scoring) @ q[row]
            best = np.argsort(-exact, kind="stable")[:k]
            scores[row, :len(best)], ids[row, :len(best)] = exact[best], found[best]
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
        (s, i), (o, j) = running_top_k(q, [(0, x)], k, signs=(1.0, -1.0))
        return s, i, o, j

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
    def load(cls, folder: str | os.PathLike, method: str, scoring: str,
             rows: Callable[[IndexMeta], StoredRows] | None = None) -> "VectorIndex":
        """The saved index of ``method`` and ``scoring``; an IVF-PQ index re-ranks on the stored vectors it was
        built from, which ``rows(meta)`` opens (called for that kind only; refused without them, or with another
        shape)."""
        check_choice("scoring", scoring, SCORINGS)
        index_path, meta_path = cls.paths(folder, method, scoring)
        if not (index_path.is_file() and meta_path.is_file()):
            raise DatablameError(f"no {scoring} index for {method} in {Path(folder)}",
                                 f"run 'datablame index WORKDIR --method {method}'")
        meta = IndexMeta(**json.loads(meta_path.read_text()))
        index = faiss.read_index(str(index_path))
        if meta.kind == "hnsw":
            index.hnsw.efSearch = meta.hnsw["efSearch"]
        stored = rows(meta) if meta.kind == "ivfpq" and rows is not None else None
        if meta.kind == "ivfpq":
            if stored is None or stored.shape != (meta.n, meta.dim):
                raise DatablameError(f"the {method} IVF-PQ index needs the {meta.n} × {meta.dim} vectors it was built "
                                     "from to re-rank on, and they are missing or differ",
                                     f"run 'datablame index WORKDIR --method {method} --approximate' again")
            index.nprobe = meta.ivf["nprobe"]
        return cls(index, meta, stored)

    def check_fresh(self, key: dict) -> None:
        """Refuse an index built from other data, checkpoints, parameters or projection than ``key`` names."""
        changed = key_changes(self.meta.key, key)
        if changed:
            raise DatablameError(
                f"the {self.meta.method} index is stale ({', '.join(changed)} changed since it was built)",
                f"rebuild it with 'datablame index WORKDIR --method {self.meta.method}'")
