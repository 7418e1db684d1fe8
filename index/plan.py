"""``datablame plan``: what a ``vectors``/``index`` run will cost here, estimated from a short measured
calibration run (never from constants).

The calibration builds the method as the run will (loading its checkpoints; the representer's refit reads every
example's features, which are then cached for the run), computes the vectors of one example (reading the feature
cache: a cost per run, not per example), then of ``sample`` examples spread over the training set twice (the
first pass also runs the encoder where the features are not cached yet; the second only the gradients), times the reduction of those vectors (the Gram matrix and self-influence) and the index
build on them, and scales each to the whole set:

=============  ===========================================  =============================================
phase          time                                         peak memory (beside the libraries) / disk
=============  ===========================================  =============================================
vectors        build + n × (encoder + vector) per example,  models + the feature matrix + one shard /
               divided among ``workers``                    the vectors (n × D × dtype)
finalize       n × (reduction per row, timed on a block of  one block of rows read from the shards (float32
               2,048 rows); + the exact Hessian of          and float64), the D × D Gram (and Hessian), the
               ``--curvature exact`` (a linear head's       self-influence / self-influence, Gram (and
               closed form, else p / 128 passes of 128      Hessian)
               Hessian-vector products), timed on such a
               block (the sample's rows repeated)
optimum        (``--at optimum``: influence at a head's     the feature matrix, one block / none
               damped optimum) OPTIMUM_STEPS × the exact
               Hessian's time (as above): the Newton steps
               (the first one's Hessian also gives λ), not
               run by the calibration
index (each)   n × (index build per row)                    the vectors, their unit-length copy (cosine)
                                                            and FAISS's own copy / the index (n × D × 4,
                                                            HNSW's graph besides)
index, IVF-PQ  real builds on 10,000 and 160,000 rows,      codes and ids, the training rows, one shard, one
(past HNSW's   each part scaled to n (``ivfpq_phase``)     block of exact scores / codes, ids, centroids
memory)
=============  ===========================================  =============================================

Peak memory counts the libraries already loaded by the calibrating process (torch, numpy; the CLI's own); times
leave out the process's start and imports (a few seconds).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from datablame.influence.build import MethodSettings, build_method
from datablame.influence.curvature import HESSIAN_CHUNK, Exact
from datablame.influence.data import Examples
from datablame.influence.features import FeatureCache
from datablame.influence.gradients import HeadGradients
from datablame.influence.grads import num_params
from datablame.influence.lissa import HessianVectorProducts
from datablame.influence.methods import ROWS, compute_train_vectors, gram
from datablame.influence.workdir import Workdir

from .rows import ArrayRows
from .search import (IVF_MIN_N, IVF_TRAIN_PER_LIST, SCORE_BLOCK, SCORINGS, IndexMeta, VectorIndex,
                     approximate_kind, ivfpq_shape)
from .vectors import SHARD_SIZE, vector_sets

GB = 2**30
OPTIMUM_STEPS = 6
"""Newton steps assumed for a head's damped optimum (:mod:`datablame.influence.optimum`): 4 or 5 measured on SST-2
(mean and pooler features) and the drug reviews, from the recipe's trained heads."""
HNSW_LINKS = 32  # neighbours per node of the HNSW graph (search.py), 2 × 4 bytes each at the base layer


@dataclass
class Phase:
    """One phase: estimated seconds, peak resident memory and disk it adds (bytes), and how it was measured."""

    name: str
    seconds: float
    peak_bytes: int
    disk_bytes: int
    note: str = ""


@dataclass
class Plan:
    """The estimate for one method: n examples, D-dimensional vectors, the calibration's sample and its own
    seconds, and the phases."""

    method: str
    n: int
    dim: int
    dtype: str
    workers: int
    sample: int
    calibration_seconds: float
    phases: list[Phase] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def peak_bytes(self) -> int:
        return max((p.peak_bytes for p in self.phases), default=0)

    @property
    def disk_bytes(self) -> int:
        return sum(p.disk_bytes for p in self.phases)

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 1), "peak_bytes": self.peak_bytes,
                "disk_bytes": self.disk_bytes}


def _model_bytes(method) -> int:
    models = getattr(method, "checkpoints", None) or [(getattr(method, "model", None), 0)]
    return sum(p.numel() * p.element_size() for m, _ in models if m is not None for p in m.parameters())


def resident_bytes() -> int:
    """Bytes this process holds in memory now (the libraries loaded): Linux's /proc, else the peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def duration(seconds: float) -> str:
    """A time for people: seconds, minutes or hours, one decimal."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


BLOCK = 2048
"""Rows the reduction is timed on: the sample's vectors repeated (matrix products of a few dozen rows run far
below the speed of large ones, which a per-row cost must not scale up)."""


def _reduction_seconds(method, vectors: torch.Tensor, labels: torch.Tensor, n: int) -> float:
    """Seconds per row of the reduction: the Gram matrix VᵀV/n (:func:`.methods.gram`, as finalize computes it)
    and the self-influence, timed on a block of min(n, BLOCK) rows (after one warm-up); the exact Hessian is
    :func:`_hessian_seconds`."""
    rows = torch.arange(min(n, BLOCK)) % len(vectors)
    block, block_labels = vectors[rows], labels[rows]

    def reduce() -> float:
        return _timed(lambda: (gram(block), method.self_influence(block, block_labels)))[0]

    reduce()
    return reduce() / len(rows)


def _hessian_seconds(method, part: Examples, n: int) -> float:
    """Seconds the exact Hessian takes over n training examples: a linear head's closed form timed on a block of
    min(n, BLOCK) rows (the sample ``part`` repeated, on its features), scaled by the rows; otherwise ⌈p / 128⌉
    calls of 128 Hessian-vector products over all of them, one timed (after a warm-up) on that block (through
    the model: on ``part`` alone) and scaled by the rows."""
    p = num_params(method.model, method.names)
    chunk = min(p, HESSIAN_CHUNK)
    features = None
    if isinstance(method.gradients, HeadGradients):
        reps = np.arange(min(n, BLOCK)) % len(part)
        block = Examples(texts=[part.texts[i] for i in reps], labels=part.labels[reps], label_names=part.label_names)
        features = FeatureCache(block)
        rows = method.gradients.train_inputs(method.model, part)[torch.as_tensor(reps)]
        features.of(method.task, method.model).put(rows)
        head = HeadGradients(method.task, [method.model], method.names, features)
        seconds, closed = _timed(lambda: head.loss_hessian(method.model, block))
        if closed is not None:  # the closed form, linear in the rows
            return seconds * n / len(block)
    else:
        block = part
    hvp = HessianVectorProducts(method.task, method.model, method.names, block, None, 0, features)
    basis = torch.eye(p)[:chunk]
    hvp(basis)
    seconds, _ = _timed(lambda: hvp(basis))
    return seconds * n / len(block) * -(-p // chunk)


def resampled(vectors: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.3,
              source: np.ndarray | None = None) -> np.ndarray:
    """(n, D) float32 rows shaped like real sketches: rows of ``vectors`` drawn with replacement (or the (n,) ids
    ``source``), plus N(0, (noise · ‖row‖)² / D) per coordinate (the synthetic vectors of ``bench/retrieval.py``
    and ``bench/scale.py``, and IVF-PQ's calibration rows here)."""
    rows = vectors[rng.integers(0, len(vectors), n) if source is None else source]
    scale = noise * np.linalg.norm(rows, axis=1, keepdims=True) / np.sqrt(vectors.shape[1])
    return (rows + scale * rng.standard_normal(rows.shape, dtype=np.float32)).astype(np.float32)


CALIBRATION_ROWS = (IVF_MIN_N, 16 * IVF_MIN_N)
"""The two IVF-PQ calibration builds (64 and 256 inverted lists): two sizes tell the training's part that grows
with nlist (product quantisers, trained on 64 rows per list) from the part that grows with nlist² (k-means)."""


def ivfpq_phase(vectors: np.ndarray, n: int, scoring: str, base: int, seed: int = 0,
                chunk: int = SHARD_SIZE) -> Phase:
    """The IVF-PQ index of n vectors, from real builds (:meth:`.search.VectorIndex.build_ivfpq`) over
    :data:`CALIBRATION_ROWS` rows :func:`resampled` from the sample's (m, D) vectors. Their measured parts are scaled to n: training as
    a·nlist + b·nlist² fitted to the two builds (a, b ≥ 0), filling and the exact top-10s by n / C, the nprobe
    sweep by the codes one probe scans, n / nlist_n against C / nlist_c (the larger build's). Peak memory and
    disk as the comments below count them."""
    rng, dim = np.random.default_rng(seed), vectors.shape[1]
    measured = []
    for rows in CALIBRATION_ROWS:
        meta = IndexMeta(method="plan", scoring=scoring, kind="ivfpq", n=rows, dim=dim, key={}, settings={})
        calibration = ArrayRows(resampled(vectors.astype(np.float32), rows, rng))
        measured.append((rows, VectorIndex.build_ivfpq(calibration, meta, seed).meta.ivf))
    (small, first), (rows, last) = measured
    (x1, t1), (x2, t2) = ((build["nlist"], build["seconds"]["train"]) for build in (first, last))
    quadratic = max(0.0, (t2 * x1 - t1 * x2) / (x1 * x2 * (x2 - x1)))  # a·x + b·x² through both points
    linear = max(0.0, (t2 - quadratic * x2 * x2) / x2)
    (nlist, m), parts = ivfpq_shape(n, dim), last["seconds"]
    seconds = (linear * nlist + quadratic * nlist ** 2 + (parts["fill"] + parts["truth"]) * n / rows
               + parts["sweep"] * (n / nlist) / (rows / last["nlist"]))
    codes = n * (m // 2 + 8)  # 4-bit codes and an int64 id per vector (disk: and the nlist centroids)
    # the codes twice (a growing inverted list is copied when it is reallocated), the training rows and a chunk
    # of stored rows with their prepared copies (and FAISS's residuals of the chunk), one block of exact scores
    peak = base + 2 * codes + (2 * IVF_TRAIN_PER_LIST * nlist + 3 * chunk) * dim * 4 + SCORE_BLOCK * 4
    calibration_s = sum(sum(build["seconds"].values()) for _, build in measured)
    return Phase(f"index ({scoring})", seconds, peak, codes + nlist * dim * 4,
                 f"IVF-PQ, {nlist} lists, {m}×4-bit codes; calibrated on {small} and {rows} rows in "
                 f"{calibration_s:.1f} s")


def plan_method(workdir: str | Path, method: str, settings: MethodSettings = MethodSettings(),
                dtype: str = "float32", scorings: Sequence[str] = SCORINGS, approximate: bool = False,
                sample: int = 64, batch_size: int = 32, workers: int = 1) -> Plan:
    """Estimate the phases of ``datablame index`` (``scorings`` empty: ``vectors``) for ``method`` from a
    calibration run on ``sample`` training examples."""
    start = time.perf_counter()
    base = resident_bytes()
    wd = Workdir(workdir)
    # the calibration does not move the head to its damped optimum (that reads every example's features, then
    # cached: a write); it is estimated below from the Hessian's time
    build_s, built = _timed(lambda: build_method(wd, method, replace(settings, at="checkpoint")))
    points = vector_sets(built, settings.at, scorings or SCORINGS)  # auto: a head's second set, at the optimum
    optimum = "optimum" in points
    n, dim = len(built.train), built.method.dim
    rows = np.unique(np.linspace(0, n - 1, min(sample + 1, n)).astype(int))
    warm_s, _ = _timed(lambda: compute_train_vectors(built.method, built.train.subset(rows[:1]), batch_size))
    build_s += warm_s  # reading the feature cache, first calls: once per run, not per example
    rows = rows[1:] if len(rows) > 2 else rows
    part = built.train.subset(rows)
    first_s, _ = _timed(lambda: compute_train_vectors(built.method, part, batch_size))
    again_s, vectors = _timed(lambda: compute_train_vectors(built.method, part, batch_size))
    m = len(rows)
    encoder, per_vector = max(first_s - again_s, 0.0) / m, again_s / m
    feature_bytes = getattr(getattr(built.method, "features", None), "nbytes", 0)  # head gradients: (n, h) features
    itemsize = np.dtype(dtype).itemsize
    phases = [Phase("vectors", build_s + n * (encoder + per_vector) / workers,
                    base + _model_bytes(built.method) + feature_bytes + SHARD_SIZE * dim * 4, n * dim * itemsize,
                    f"per example: encoder {encoder * 1e3:.2f} ms, vector {per_vector * 1e3:.2f} ms; "
                    f"build {build_s:.1f} s")]
    per_row = _reduction_seconds(built.method, torch.from_numpy(vectors), torch.as_tensor(part.labels), n)
    exact = isinstance(getattr(built.method, "curvature", None), Exact)
    stored = dim * dim * 8 * (hasattr(built.method, "finalize") + exact)  # final-gram.npy (+ final-hessian.npy)
    hessian_s = _hessian_seconds(built.method, part, n) if exact or optimum else 0.0
    if optimum:
        phases.insert(0, Phase("optimum", OPTIMUM_STEPS * hessian_s, base + _model_bytes(built.method)
                               + feature_bytes + min(n, ROWS) * dim * 8, 0,
                               f"{OPTIMUM_STEPS} Newton steps, one exact Hessian each"))
    # read from the shards a block at a time: one block as float32 and float64 (two copies), the Gram (and
    # Hessian), the (n,) self-influence
    phases.append(Phase("finalize", n * per_row + (hessian_s if exact else 0.0), base + min(n, ROWS) * dim * (4 + 2 * 8)
                        + dim * dim * 8 * (1 + exact) + n * 8, n * 4 + stored,
                        f"{per_row * 1e6:.1f} µs per example"
                        + (f"; the exact Hessian {hessian_s:.1f} s" if exact else "")))
    if len(points) > 1:  # the same work again for the optimum's set
        phases += [replace(phase, name=f"{phase.name} (optimum)") for phase in phases
                   if phase.name in ("vectors", "finalize")]
    for scoring in scorings:
        if approximate and approximate_kind(n, dim) == "ivfpq":
            phases.append(ivfpq_phase(vectors, n, scoring, base, settings.seed))
            continue
        meta = IndexMeta(method=method, scoring=scoring, kind="exact", n=m, dim=dim, key={}, settings={})
        index_s, _ = _timed(lambda: VectorIndex.build(vectors, meta, approximate and m > 1))
        graph = n * HNSW_LINKS * 2 * 4 if approximate else 0
        phases.append(Phase(f"index ({scoring})", n * index_s / m * (np.log2(max(n, 2)) / np.log2(max(m, 2))
                                                                     if approximate else 1),
                            base + (3 if scoring == "cosine" else 2) * n * dim * 4 + graph, n * dim * 4 + graph,
                            "HNSW" if approximate else "exact"))
    return Plan(method, n, dim, dtype, workers, m, time.perf_counter() - start, phases)
